"""Scale rehearsal: a precomputed-feature set of Flickr30K's shape, run end to end, every stage measured.

`itr-distill rehearse` generates the set (core.data.synthetic_features: 29,000 / 1,014 / 1,000 images
x 36 regions x 2048, five captions each), writes a config for it (SCAN features, the default student:
in-batch KD + context alignment, one epoch per training, KD fed online by `scores.kd_source: auto`),
runs `itr-distill run` on it in a child process (so that the generator's memory is not the run's),
and writes `rehearsal.{json,md}`: each stage's wall time, peak anonymous and resident memory, bytes
written and teacher pairs, beside the plan's estimates; and the plan at COCO's size (113,287 images)
with the projected peaks (each stage's measured peak plus the growth the plan estimates).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from core.config import load_config
from core.data.synthetic_features import generate_features
from core.io import read_json, write_json, write_text
from core.machine import machine_info
from core.run_layout import RunPaths
from distill.plan import GIB, SplitShape, make_plan, split_shapes
from distill.stages import load_split, teacher_tokens
from teacher.online import OnlineTeacher

FLICKR30K = (29_000, 1_014, 1_000)
COCO = SplitShape(113_287, 566_435)  # train + restval
COCO_VAL = SplitShape(1_000, 5_000)  # validation on 1K images, as for Flickr30K (data.limit_val)
COCO_TEST = SplitShape(5_000, 25_000)  # evaluation on the 5K test set
SCRATCH_TEXT = {"model": "scratch", "max_length": 32,
                "scratch": {"vocab_size": 1000, "hidden_size": 128, "num_layers": 2, "num_heads": 2, "intermediate_size": 256}}


def rehearsal_config(data_dir: Path, run_dir: Path, epochs: int = 1) -> dict[str, Any]:
    """A config a user with SCAN's precomputed features would write, at one epoch per training."""
    towers = {"image_tower": {"kind": "features"}, "text_tower": SCRATCH_TEXT, "embed_dim": 256}
    train = {"epochs": epochs, "batch_size": 128, "lr": 5.0e-4, "warmup_steps": 100}
    return {
        "run_dir": str(run_dir),
        "data": {"format": "precomputed", "path": str(data_dir), "splits": {"train": ["train"], "val": ["val"],
                                                                         "test": ["test"]}},
        "teacher": {**copy.deepcopy(towers), "train": dict(train)},
        "student": {**copy.deepcopy(towers), "image_pooling": "tower", "train": dict(train)},
        "experiment": {"seeds": [0]},
        "bench": {"matrix_backends": ["pytorch-fp32", "onnxruntime-cpu"], "gallery_sizes": [1000, 5000, 25000, 100000]},
    }


def _stage_key(name: str) -> str:
    """The plan's name of a recorded stage ('distill baseline seed 0' -> 'distill baseline')."""
    return name.split(" seed ")[0]


def _work_ratio(stage: str, here: dict[str, SplitShape], there: dict[str, SplitShape], pairs_here: int | None,
                pairs_there: int | None) -> float:
    """How much more work a stage does at `there` than `here`: training captions for trainings,
    items for the token store, teacher pairs for scoring stages; the rest does not grow."""
    if stage.startswith(("teacher fit", "distill")):
        return there["train"].captions / here["train"].captions
    if stage.startswith("teacher tokens"):
        return (there["train"].images + there["train"].captions) / (here["train"].images + here["train"].captions)
    if stage.startswith(("eval", "teacher score")) and pairs_here:
        return (pairs_there or 0) / pairs_here
    return 1.0


def summarise(config_path: Path, run_dir: Path, wall_s: float | None) -> dict[str, Any]:
    """Measured stages beside the plan's estimates, and the plan and projected peaks at COCO's size."""
    cfg = load_config(config_path)
    measured = read_json(RunPaths(run_dir).stage_log)
    plan = {s.name: s for s in make_plan(cfg).stages}
    here = split_shapes(cfg)
    there = {"train": COCO, "val": COCO_VAL, "test": COCO_TEST}
    coco = {s.name: s for s in make_plan(cfg, shapes=there).stages}
    rows = []
    for record in measured["stages"]:
        key = _stage_key(record["stage"])
        estimate, at_coco = plan.get(key), coco.get(key)
        growth = (at_coco.peak_bytes - estimate.peak_bytes) if estimate and at_coco else 0
        rows.append({**record, "plan_peak_bytes": estimate.peak_bytes if estimate else None,
                     "plan_teacher_pairs": estimate.teacher_pairs if estimate else None,
                     "coco_plan_peak_bytes": at_coco.peak_bytes if at_coco else None,
                     "coco_projected_peak_anon_bytes": (record["peak_anon_bytes"] or 0) + max(0, growth),
                     "coco_teacher_pairs": at_coco.teacher_pairs if at_coco else None,
                     "coco_disk_bytes": at_coco.disk_bytes if at_coco else None,
                     "coco_projected_seconds": round(record["seconds"] * _work_ratio(
                         key, here, there, estimate.teacher_pairs if estimate else None,
                         at_coco.teacher_pairs if at_coco else None), 1)})
    timed = "`itr-distill run` took" if wall_s is not None else "the stages took, in all,"
    wall_s = wall_s if wall_s is not None else sum(r["seconds"] for r in measured["stages"])
    return {"machine": measured["machine"], "config": str(config_path), "run_dir": str(run_dir), "wall_s": round(wall_s, 1),
            "timed": timed,
            "shape": {"train": FLICKR30K[0], "val": FLICKR30K[1], "test": FLICKR30K[2]}, "stages": rows,
            "coco": {name: dataclasses.asdict(shape) for name, shape in there.items()}}


@torch.no_grad()
def online_sources(config_path: Path, batches: int = 10, batch_size: int = 128, seed: int = 0) -> dict[str, Any]:
    """ms per training step of the online teacher's two possible sources, on the same random batches:
    the token store (rows read, one cross attention), and the towers' inputs through the teacher's
    heads (features read, regions projected, captions run through its text tower, then the same
    cross attention). The first is what the pipeline uses; this measures why."""
    cfg = load_config(config_path)
    paths = RunPaths(cfg.run_dir)
    train = load_split(cfg, "train")
    teacher, store = teacher_tokens(cfg, "train", train, torch.device("cpu"))
    online = OnlineTeacher(teacher, store)
    rng = np.random.default_rng(seed)
    picks = [np.sort(rng.choice(train.n_images, batch_size, replace=False)) for _ in range(batches)]
    captions = [p * train.captions_per_image + rng.integers(0, train.captions_per_image, len(p)) for p in picks]

    def from_store(i: int) -> None:
        online(torch.from_numpy(picks[i]), torch.from_numpy(captions[i]))

    def through_heads(i: int) -> None:
        regions = torch.from_numpy(np.asarray(train.features[picks[i]], dtype=np.float32))
        tokens = teacher.tokenize([train.captions[j] for j in captions[i]])
        teacher.score(teacher.encode_images(regions), teacher.encode_text(tokens["input_ids"], tokens["attention_mask"]))

    out = {"batch_size": batch_size, "batches": batches, "source": str(paths.teacher_tokens("train"))}
    for name, step in (("token_store", from_store), ("towers_through_heads", through_heads)):
        step(0)  # warm-up
        started = time.perf_counter()
        for i in range(batches):
            step(i)
        out[f"{name}_ms_per_step"] = round(1000 * (time.perf_counter() - started) / batches, 1)
    return out


def _gib(n: float | None) -> str:
    return "-" if n is None else f"{n / GIB:.2f}"


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"# Scale rehearsal at Flickr30K's shape ({result['shape']['train']:,} / {result['shape']['val']:,} / "
             f"{result['shape']['test']:,} images x 36 x 2048)", "",
             f"Machine: {m.get('cpu')}, {m.get('cpu_count')} cores, {m.get('memory_gib')} GiB; {result['timed']} "
             f"{result['wall_s']:.0f} s. Memory in GiB; anonymous = RssAnon (memory-mapped pages not counted).", "",
             "| stage | wall s | peak anon | peak RSS | plan's peak | written GiB | teacher pairs | COCO: plan's peak | "
             "COCO: projected peak anon | COCO: teacher pairs | COCO: projected s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["stages"]:
        lines.append(f"| {r['stage']} | {r['seconds']:.0f} | {_gib(r['peak_anon_bytes'])} | {_gib(r['peak_rss_bytes'])} | "
                     f"{_gib(r['plan_peak_bytes'])} | {_gib(r['written_bytes'])} | {r['teacher_pairs'] or 0:.3g} | "
                     f"{_gib(r['coco_plan_peak_bytes'])} | {_gib(r['coco_projected_peak_anon_bytes'])} | "
                     f"{r['coco_teacher_pairs'] or 0:.3g} | {r['coco_projected_seconds']:.0f} |")
    lines += ["", "COCO: train + restval (113,287 images, 566,435 captions), validation on 1K images, evaluation on the 5K "
              "test set (folds 1). Projected peak anon = the peak measured here + the growth the plan estimates; projected seconds = "
              "the seconds here x the growth of the stage's work (training captions, items encoded, or teacher pairs)."]
    o = result.get("online_sources")
    if o:
        lines += ["", f"Online teacher, ms per step of {o['batch_size']} pairs (mean of {o['batches']} batches): token store "
                  f"{o['token_store_ms_per_step']}, towers' inputs through the teacher's heads {o['towers_through_heads_ms_per_step']}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="itr-distill rehearse", description=__doc__)
    ap.add_argument("--data", default="runs/flickr30k-shape-data", help="where the feature set is (or is generated)")
    ap.add_argument("--run-dir", default="runs/flickr30k-shape")
    ap.add_argument("--out", default="bench/results/rehearsal", help="directory of rehearsal.{json,md}")
    ap.add_argument("--images", type=int, nargs=3, default=list(FLICKR30K), metavar=("TRAIN", "VAL", "TEST"))
    ap.add_argument("--regions", type=int, default=36)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--summarise", action="store_true",
                    help="only write the result files again, from the finished run's stages.json")
    args = ap.parse_args(argv)
    data, run_dir = Path(args.data), Path(args.run_dir)
    if not (data / "test_caps.txt").is_file():
        print(generate_features(data, *args.images, regions=args.regions, dim=args.dim), file=sys.stderr)
    config = run_dir.parent / f"{run_dir.name}.yaml"
    write_text(config, yaml.safe_dump(rehearsal_config(data.resolve(), run_dir.resolve(), args.epochs), sort_keys=False))
    out = Path(args.out)
    started = time.perf_counter()
    if args.summarise:  # the run's wall time, as the rehearsal that ran it recorded it
        wall_s = read_json(out / "rehearsal.json").get("wall_s") if (out / "rehearsal.json").is_file() else None
    else:
        subprocess.run([sys.executable, "-m", "distill", "run", str(config)], check=True)
        wall_s = time.perf_counter() - started
    result = summarise(config, run_dir, wall_s)
    result["shape"] = dict(zip(("train", "val", "test"), args.images, strict=True))
    result["machine_info"] = machine_info()
    result["online_sources"] = online_sources(config)
    write_json(out / "rehearsal.json", result)
    write_text(out / "rehearsal.md", markdown(result))
    print(markdown(result))
    return 0
