# Length groups (commit after 0926e7f) against the code before them (0926e7f), one after the other on one
# log.txt: the log of the run that gave the committed files (run directories /tmp/prof/{old,new} then).
# machine with nothing else running: one teacher epoch of configs/flickr8k.yaml (training.json: "seconds") and
# the all-pairs scoring of the test split (500 x 2,500 pairs; log.txt: the "teacher scoring" line, and the
# time from "token store of test" to "scored" for the new code, whose progress bar is too short to print).
# Both read the frozen-trunk caches of runs/flickr8k/features (built by `make flickr8k` or any teacher fit).
set -e
root=$PWD
git worktree add /tmp/before 0926e7f
for v in before after; do
  mkdir -p /tmp/lg-$v && ln -sfn $root/runs/flickr8k/features /tmp/lg-$v/features
done
data="--set data.path=$root/../shared/data/flickr8k-dev/dataset_flickr8k.json --set data.image_root=$root/../shared/data/flickr8k-dev/images"
(cd /tmp/before && PYTHONPATH=/tmp/before $root/.venv/bin/python -m distill teacher fit $root/configs/flickr8k.yaml --run-dir /tmp/lg-before --set teacher.train.epochs=1 $data)
.venv/bin/itr-distill teacher fit configs/flickr8k.yaml --run-dir /tmp/lg-after --set teacher.train.epochs=1
(cd /tmp/before && PYTHONPATH=/tmp/before $root/.venv/bin/python -m distill teacher score $root/configs/flickr8k.yaml --run-dir /tmp/lg-before --split test --cache all-pairs --set teacher.train.epochs=1 $data)
.venv/bin/itr-distill teacher score configs/flickr8k.yaml --run-dir /tmp/lg-after --split test --cache all-pairs --set teacher.train.epochs=1
cp /tmp/lg-before/teacher/training.json bench/results/cpu-epyc-2core/length-groups/before-teacher-training.json
cp /tmp/lg-after/teacher/training.json bench/results/cpu-epyc-2core/length-groups/after-teacher-training.json
git worktree remove --force /tmp/before
