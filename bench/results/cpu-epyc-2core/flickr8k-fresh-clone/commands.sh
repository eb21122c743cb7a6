#!/usr/bin/env bash
# `make flickr8k` in a fresh clone of commit 2cfd9f8 (2-core AMD EPYC, no GPU), from an empty run directory, with
# ../shared beside the clone; the virtual environment is created by make. Copies of the run's report, evaluation
# results, latency files, stages.json and its log lines (progress bars left out) are beside this file.
# (The earlier run of this file, commit a1148a7 with 6-epoch teacher and students: see git history.)
set -euo pipefail
repo=$(realpath "$(dirname "$0")/../../../..")
rm -rf /tmp/fc9 && git clone -q "$repo" /tmp/fc9 && git -C /tmp/fc9 checkout -q 2cfd9f8
ln -sfn "$(realpath "$repo/../shared")" /tmp/shared
cd /tmp/fc9 && start=$(date +%s) && make flickr8k && echo "wall $(( $(date +%s) - start )) s (with the virtual environment)"
