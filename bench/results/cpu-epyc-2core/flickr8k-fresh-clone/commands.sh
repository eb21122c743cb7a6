#!/usr/bin/env bash
# `make flickr8k` in a fresh clone of commit ea8fdb8 (2-core AMD EPYC, no GPU), from an empty run directory, with
# ../shared beside the clone; the virtual environment is created by make. Copies of the run's report, evaluation
# results, latency files, stages.json and its log lines (progress bars left out) are beside this file. In the
# ea8fdb8 run a 110-s test ran beside the last minutes of bench: its latency files (latency.json, bench.md and the
# latency columns of report.*) are not figures.
# (Earlier runs of this file: c916afe, 2cfd9f8 and a1148a7, with longer schedules; see git history.)
set -euo pipefail
repo=$(realpath "$(dirname "$0")/../../../..")
rm -rf /tmp/fc12 && git clone -q "$repo" /tmp/fc12 && git -C /tmp/fc12 checkout -q ea8fdb8
ln -sfn "$(realpath "$repo/../shared")" /tmp/shared
cd /tmp/fc12 && start=$(date +%s) && make flickr8k && echo "wall $(( $(date +%s) - start )) s (with the virtual environment)"
