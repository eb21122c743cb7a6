#!/usr/bin/env bash
# `make flickr8k` in a fresh clone of commit c2f7b58 (2-core AMD EPYC, no GPU), from an empty run directory, with
# ../shared beside the clone; the virtual environment is created by make. Copies of the run's report, evaluation
# results, latency files, stages.json and its log lines (progress bars left out) are beside this file. Nothing else
# ran on the machine during the run. stages.json records the machine's float32 product rate after each stage
# (178-199 GFLOP/s in this run, 27-41 in ea8fdb8's).
# (Earlier runs of this file: ea8fdb8, c916afe, 2cfd9f8 and a1148a7; see git history.)
set -euo pipefail
repo=$(realpath "$(dirname "$0")/../../../..")
rm -rf /tmp/fc13 && git clone -q "$repo" /tmp/fc13 && git -C /tmp/fc13 checkout -q c2f7b58
ln -sfn "$(realpath "$repo/../shared")" /tmp/shared
cd /tmp/fc13 && start=$(date +%s) && make flickr8k && echo "wall $(( $(date +%s) - start )) s (with the virtual environment)"
