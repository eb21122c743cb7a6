"""One JSON line: the metrics on the evaluation split (Flickr8k's 500 val images) of the run's current
`students/distilled-pack`, scored as `itr-distill eval` scores a student (over the frozen trunk caches), with
its members' weights and selection figures (each member's own metrics: `eval`'s results.json).
Usage: pack_metrics.py NAME [itr-distill config arguments: --run-dir, --set ...]."""
import json
import sys

import torch

from core.config import load_config
from core.io import read_json
from core.run_layout import ModelDir, RunPaths
from core.towers.frozen import frozen_for
from distill.models import load_model
from distill.stages import load_split
from eval.evaluate import student_sims
from eval.metrics import retrieval_metrics

name, args = sys.argv[1], sys.argv[2:]
overrides = [f"run_dir={args[args.index('--run-dir') + 1]}"] + [args[i + 1] for i, a in enumerate(args) if a == "--set"]
cfg = load_config("configs/flickr8k.yaml", overrides)
paths, device = RunPaths(cfg.run_dir), torch.device("cpu")
split = load_split(cfg, cfg.eval.split)
pack_dir = paths.pack("distilled")
info = read_json(ModelDir(pack_dir).info)


def metrics(model_dir):
    model = load_model(model_dir, device)
    frozen = frozen_for(model, split, paths.features, cfg.eval.batch_size, device)
    sims = student_sims(model, split, model.image_tower.preprocess(), cfg.eval.batch_size, device, False, frozen)
    return retrieval_metrics(sims, split.captions_per_image)


row = {"name": name, "split": cfg.eval.split, "selection": info["selection"],
       "members": {m["directory"]: {"grid_weight": m["grid_weight"], "selection_rsum_alone": m["selection_rsum_alone"]}
                   for m in info["members"]},
       "pack": metrics(pack_dir)}
print(json.dumps(row))
