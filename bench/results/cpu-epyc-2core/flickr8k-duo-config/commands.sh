#!/usr/bin/env bash
# configs/flickr8k-duo.yaml (the setup that reaches the Flickr8k targets) in a fresh clone of commit c2f7b58 on a
# 2-core AMD EPYC, no GPU, from an empty run directory, with ../shared beside the clone; the virtual environment
# is created by make first and not counted in the run's time. With two seeds instead of the config's three, so
# that it fitted the session: the run was started with three, stopped during the second contrastive student
# (the teacher fits, the ensemble and the first contrastive student were done: stages-part1.json), and
# continued in the same run directory with `experiment.seeds=[0, 1]`, which redid the second contrastive student
# from its start and reused the rest. Copies of the second invocation's report, evaluation results, latency
# files, stages.json and both invocations' log lines (progress bars left out) are beside this file.
set -euo pipefail
repo=$(realpath "$(dirname "$0")/../../../..")
rm -rf /tmp/fd1 && git clone -q "$repo" /tmp/fd1 && git -C /tmp/fd1 checkout -q c2f7b58
ln -sfn "$(realpath "$repo/../shared")" /tmp/shared
cd /tmp/fd1 && make .venv/.installed
.venv/bin/itr-distill run configs/flickr8k-duo.yaml --set "experiment.seeds=[0, 1]"
