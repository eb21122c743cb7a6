#!/usr/bin/env bash
# MEMBER's token-level memory (`student.memory_bank.level: token`, 64 slots per bank) on Flickr8k
# (configs/flickr8k.yaml): contrastive students with and without it, seeds 0-2, selection on train[-250:],
# reported on the 500 val images. Neither row reads the teacher, so none is fitted. `baseline` keeps its key
# (MEMBER off), so it is the configured run's contrastive student: `make flickr8k` reuses it, and the reverse.
# The KD rows of the scenes' table (kd, kd+member-token) need the fitted teacher: add them to VARIANTS.
set -euo pipefail
cd "$(dirname "$0")/../../../.."   # the repository root
out=bench/results/cpu-epyc-2core/flickr8k-member-token
start=$(date +%s)
.venv/bin/itr-distill ablate configs/flickr8k.yaml --variants ${VARIANTS:-baseline member-token} \
  --set student.memory_bank.slots=64 --set "experiment.seeds=${SEEDS:-[0,1,2]}"
echo "ablation finished in $(( $(date +%s) - start )) s"
cp runs/flickr8k/ablation/ablation.{json,md} $out/
