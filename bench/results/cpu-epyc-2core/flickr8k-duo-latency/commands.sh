#!/usr/bin/env bash
# The duo setup's per-query latencies on Flickr8k's 500 val images with `bench` timing the run's teacher: scan-duo
# (both members encode the caption and score the gallery) against its configured member alone, as `bench` timed it
# before. Latency does not depend on what the weights learned, so the models come from a short run of
# configs/flickr8k-duo.yaml (the first 600 training images, one epoch each; the same architectures, the same
# 500-image gallery). Nothing else ran on the machine while bench ran. Copies of each latency.json and bench.md here.
set -euo pipefail
cd "$(dirname "$0")/../../../.."   # the repository root
out=$PWD/bench/results/cpu-epyc-2core/flickr8k-duo-latency
run=/tmp/flickr8k-duo-short
S=(--run-dir $run --set data.limit_train=600 --set teacher.train.epochs=1 --set student.train.epochs=1
   --set "experiment.seeds=[0]" --set experiment.pack=false)
B=(--set bench.matrix=false --set bench.scaling=false)
itr=.venv/bin/itr-distill
$itr teacher fit configs/flickr8k-duo.yaml "${S[@]}"
$itr distill configs/flickr8k-duo.yaml --variant baseline --seed 0 "${S[@]}"
$itr teacher score configs/flickr8k-duo.yaml --cache all-pairs "${S[@]}"
$itr teacher score configs/flickr8k-duo.yaml --cache top-k "${S[@]}"
$itr distill configs/flickr8k-duo.yaml --variant distilled --seed 0 "${S[@]}"
$itr export configs/flickr8k-duo.yaml "${S[@]}"
for teacher in scan-duo configured; do
  t=$([ $teacher = configured ] && echo "''" || echo $teacher)
  $itr bench configs/flickr8k-duo.yaml "${S[@]}" "${B[@]}" --set "teacher.ensemble=$t"
  mkdir -p $out/$teacher && cp $run/bench/latency.json $run/bench/bench.md $out/$teacher/
done
