#!/bin/bash
set -e
# Students with MiniLM's last two layers fine-tuned, distilled from the scan-trio ensemble of runs/flickr8k (2-core Xeon, no GPU).
cd "$(dirname "$0")/../../../.."   # the repository root; runs/flickr8k holds the ensemble run
src=$(realpath runs/flickr8k); dir=runs/flickr8k-texttop
mkdir -p $dir/scores
for d in features teacher teachers teacher_tokens teacher_ensemble; do [ -e $dir/$d ] || ln -s $src/$d $dir/$d; done
[ -e $dir/scores/train ] || ln -s $src/scores/train $dir/scores/train
cp -n $src/file_checks.json $src/data.json $dir/ 2>/dev/null || true
set=(--run-dir $dir --set teacher.ensemble=scan-trio --set student.text_tower.train_top=2)
start=$(date +%s)
for s in 0 1 2; do .venv/bin/itr-distill distill configs/flickr8k.yaml --variant baseline --seed $s "${set[@]}"; done
.venv/bin/itr-distill teacher score configs/flickr8k.yaml --cache top-k "${set[@]}"
for s in 0 1 2; do .venv/bin/itr-distill distill configs/flickr8k.yaml --variant distilled --seed $s "${set[@]}"; done
.venv/bin/itr-distill eval configs/flickr8k.yaml "${set[@]}"
echo "chain finished in $(( $(date +%s) - start )) s"
