#!/usr/bin/env bash
# `itr-distill bench input` on Flickr8k (configs/flickr8k.yaml; ../shared/data/flickr8k-dev, 224x224 JPEGs)
# with the student's towers unfrozen (a frozen trunk's outputs come from its feature cache and need no
# images): per-caption decoding, the image-level sampler and the uint8 cache, each with 0 and 2 DataLoader
# workers (3 rounds over the six settings, 20 batches each), then the model step. Writes input_bench.json
# and input_bench.md here. JPEG draft decoding (--draft) is left out: at 224x224 these files decode at full
# scale either way (the same pixels). Run from the repository root when nothing else is busy (`uptime`
# load average below ~2.5).
set -euo pipefail
out=bench/results/cpu-xeon-2core/input
rm -rf runs/bench-input/images   # so that the uint8 cache's build is timed too
.venv/bin/itr-distill bench input configs/flickr8k.yaml --run-dir runs/bench-input \
  --set student.image_tower.freeze=false --set student.text_tower.freeze=false \
  --batches 20 --rounds 3 --workers 0 2 --steps 3 --out "$out"
