#!/usr/bin/env bash
# `make flickr8k` in a fresh clone of commit c916afe (2-core AMD EPYC, no GPU), from an empty run directory, with
# ../shared beside the clone; the virtual environment is created by make. Copies of the run's report, evaluation
# results, latency files, stages.json and its log lines (progress bars left out) are beside this file.
# (Earlier runs of this file: 2cfd9f8 and a1148a7, with longer schedules and three seeds; see git history.)
set -euo pipefail
repo=$(realpath "$(dirname "$0")/../../../..")
rm -rf /tmp/fc11 && git clone -q "$repo" /tmp/fc11 && git -C /tmp/fc11 checkout -q c916afe
ln -sfn "$(realpath "$repo/../shared")" /tmp/shared
cd /tmp/fc11 && start=$(date +%s) && make flickr8k && echo "wall $(( $(date +%s) - start )) s (with the virtual environment)"
