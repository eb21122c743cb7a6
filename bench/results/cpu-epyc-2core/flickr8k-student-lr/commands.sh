#!/usr/bin/env bash
# Contrastive Lite0 students on Flickr8k (configs/flickr8k.yaml, seeds 0-2, selection on train[-250:], reported on
# the 500 val images) at a fifth of the configured learning rate (student.train.lr 1e-4 instead of 5e-4). At
# 5e-4 these students select epoch 1 or 2 of 6 (the contrastive loss falls from 2.7 to 0.11 while the selection
# rsum falls after the first epochs); the reference row is the contrastive row of
# bench/results/cpu-epyc-2core/flickr8k-member-token (the same code, the configured rate). No teacher is read.
# Ran with OMP_NUM_THREADS=1 beside a teacher fit (runs/f8k-duo), so its epoch times say nothing.
set -euo pipefail
cd "$(dirname "$0")/../../../.."   # the repository root
out=bench/results/cpu-epyc-2core/flickr8k-student-lr
dir=runs/f8k-lr
mkdir -p runs/flickr8k/features $dir && { [ -e $dir/features ] || ln -s "$(realpath runs/flickr8k/features)" $dir/features; }
OMP_NUM_THREADS=1 .venv/bin/itr-distill ablate configs/flickr8k.yaml --variants baseline --run-dir $dir \
  --set "experiment.seeds=[0,1,2]" --set student.train.lr=1.0e-4
cp $dir/ablation/ablation.{json,md} $out/
# per-epoch selection figures: this run's students, and the configured rate's (runs/flickr8k, the member-token run)
for s in 0 1 2; do
  cp $dir/students/baseline-seed$s/training.json $out/lr1e-4-seed$s-training.json
  [ -f runs/flickr8k/students/baseline-seed$s/training.json ] && cp runs/flickr8k/students/baseline-seed$s/training.json $out/lr5e-4-seed$s-training.json
done
