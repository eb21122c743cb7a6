#!/usr/bin/env bash
# One SCAN teacher over both image backbones (configs/flickr8k.yaml's teacher variant `two-backbone`: Lite2 at
# 260 px plus Lite0 on the same pixels, 81 tokens of 2,560 channels, the duo student's image tower) against
# scan-duo, the ensemble of two teachers with one backbone each. Seeds 0 and 1, the configured teacher's budget
# (6 epochs), selection on train[-250:], reported on the 500 val images. Copies the table, each epoch's
# record and the log here. --resume continues an interrupted fit from its latest checkpoint (the log appends).
set -euo pipefail
cd "$(dirname "$0")/../../../.."   # the repository root
out=$PWD/bench/results/cpu-epyc-2core/flickr8k-teacher-two-backbone
run=runs/flickr8k-two-backbone-teacher
.venv/bin/itr-distill ablate-teachers configs/flickr8k.yaml --variants two-backbone --seeds 0 1 --run-dir $run --resume 2>&1 \
  | grep --line-buffered -v "%|" | tee -a $out/log.txt
cp $run/ablation/teachers.json $run/ablation/teachers.md $out/
grep epoch_end $run/teachers/two-backbone-seed0/teacher/train_log.jsonl > $out/epochs.jsonl
grep epoch_end $run/teachers/two-backbone-seed1/teacher/train_log.jsonl > $out/epochs-seed1.jsonl
