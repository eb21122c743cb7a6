# Teacher speed: the code before (0926e7f) against after (length groups in SCAN scoring and the text top;
# top-K pair scoring without a Gram matrix per candidate, float16 converted by torch), one after the other on
# one machine with nothing else running:
#  - one teacher epoch of configs/flickr8k.yaml (*-teacher-training.json: "seconds");
#  - all-pairs scoring of the test split, 500 x 2,500 pairs (log.txt: the "teacher scoring" line; for the new
#    code, whose progress bar is too short to print, the time from "token store of test" to "scored");
#  - the top-100 cache of train, 13,750 + 2,750 queries x 100 candidates (topk-log.txt).
# Both read the frozen-trunk caches of runs/flickr8k/features (built by `make flickr8k` or any teacher fit).
# log.txt and topk-log.txt are the logs of the runs that gave the committed figures (run directories
# /tmp/prof/{old,new} then; both top-K runs read /tmp/prof/new, whose teacher the new code fitted, and the
# "before" top-K run used commit 02c3b0f, whose pair scoring is 0926e7f's).
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
# top-100 candidate scoring of train (1.65M pairs; topk-log.txt) from a one-epoch baseline student's candidates
.venv/bin/itr-distill distill configs/flickr8k.yaml --run-dir /tmp/lg-after --variant baseline --seed 0 --set student.train.epochs=1 --set teacher.train.epochs=1
ln -s /tmp/lg-after/students /tmp/lg-before/students
(cd /tmp/before && PYTHONPATH=/tmp/before $root/.venv/bin/python -m distill teacher score $root/configs/flickr8k.yaml --run-dir /tmp/lg-before --split train --cache top-k --set teacher.train.epochs=1 --set student.train.epochs=1 $data)
.venv/bin/itr-distill teacher score configs/flickr8k.yaml --run-dir /tmp/lg-after --split train --cache top-k --set teacher.train.epochs=1 --set student.train.epochs=1
cp /tmp/lg-before/teacher/training.json bench/results/cpu-epyc-2core/teacher-speed/before-teacher-training.json
cp /tmp/lg-after/teacher/training.json bench/results/cpu-epyc-2core/teacher-speed/after-teacher-training.json
git worktree remove --force /tmp/before
