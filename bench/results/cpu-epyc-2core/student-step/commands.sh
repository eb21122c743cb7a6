#!/usr/bin/env bash
# A GPO student's epoch over frozen features before and after the CPU sort and the skipped local projection
# (2-core AMD EPYC, no GPU, nothing else running): configs/flickr8k-duo.yaml's student (Lite2-260 + Lite0,
# 81 tokens of 2,560 channels, GPO on both sides, MiniLM's top 2) on the first 600 training images, one
# epoch of 23 steps plus its selection pass, seed 0: the contrastive `baseline`, and `distilled` with the
# teacher's terms off (contrastive + SelfAlign's align and concept terms + the momentum queues), which needs
# no fitted teacher. "before" is commit 69dd7ac, run from a worktree with the same virtual environment.
# Each line of epochs.txt is the epoch's log line (loss terms, selection rsum, seconds).
set -euo pipefail
cd "$(dirname "$0")/../../../.."   # the repository root
out=$PWD/bench/results/cpu-epyc-2core/student-step
data=$(realpath ../shared/data/flickr8k-dev)
S=(--run-dir /tmp/student-step --set data.path=$data/dataset_flickr8k.json --set data.image_root=$data/images
   --set data.limit_train=600 --set student.train.epochs=1 --set "experiment.seeds=[0]"
   --set experiment.pack=false)
TEACHERLESS=(--set student.losses.kd.weight=0 --set student.losses.cached_kd.weight=0 --set student.losses.guided.weight=0)
py=$PWD/.venv/bin/python
[ -d /tmp/student-step-before ] || git worktree add -q --detach /tmp/student-step-before 69dd7ac
for code in /tmp/student-step-before "$PWD"; do
  (cd $code
   $py -m distill distill configs/flickr8k-duo.yaml --variant baseline --seed 0 --force "${S[@]}" 2>&1 | grep "epoch 1/1: loss" | sed "s|^|$(git -C $code rev-parse --short HEAD) |"
   $py -m distill distill configs/flickr8k-duo.yaml --variant distilled --seed 0 --force "${S[@]}" "${TEACHERLESS[@]}" 2>&1 \
     | grep "epoch 1/1: loss" | sed "s|^|$(git -C $code rev-parse --short HEAD) |")
done | tee $out/epochs.txt
