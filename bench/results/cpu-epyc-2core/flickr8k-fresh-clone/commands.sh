#!/usr/bin/env bash
# `make flickr8k` in a fresh clone of commit a1148a7 (2-core AMD EPYC, no GPU), from an empty run directory, with
# ../shared beside the clone; the virtual environment is created by make. Copies of the run's report, evaluation
# results, latency files, stages.json and its log lines (progress bars left out) are beside this file.
set -euo pipefail
repo=$(realpath "$(dirname "$0")/../../../..")
rm -rf /tmp/fc8 && git clone -q "$repo" /tmp/fc8 && git -C /tmp/fc8 checkout -q a1148a7
ln -sfn "$(realpath "$repo/../shared")" /tmp/shared
cd /tmp/fc8 && start=$(date +%s) && make flickr8k && echo "wall $(( $(date +%s) - start )) s (with the virtual environment)"
