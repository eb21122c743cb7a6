"""`itr-distill pack`: the students of several seeds packed into one dual encoder (student/packed.py).

The members' weights are chosen on the selection split (`data.splits.val`), as a teacher ensemble's
are (`eval.ensemble.fit_ensemble`): each member's scores standardised by their spread there, then the
simplex point with the best selection rsum among those that give every member some weight (a pack
of the seeds asked for; the selection rsum of each member alone is recorded beside the pack's, so
whether packing pays is there to read). Standardising subtracts a constant per member, which no
ranking sees, so member i's share of the packed dot product is weight_i / std_i, rescaled so that the
shares sum to one (`student.packed`: a unit-norm embedding, scores on the cosine scale).

The pack's directory holds `model.json` (its members, by directory name beside it, and how the
weights were chosen) and `model.safetensors` (the weights as a tensor, and each member's weights
checksum as metadata): retraining a member changes neither file's meaning silently, since loading
checks the checksums and the export, keyed by this file's hash, is redone after a new pack.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open

from core.checkpoint import save_tensors
from core.config import Config
from core.devices import resolve_device
from core.io import read_json, sha256_file, write_json
from core.run_layout import ModelDir, RunPaths, stamp, up_to_date
from core.towers.frozen import frozen_for
from distill.stages import load_split
from eval.ensemble import fit_ensemble
from eval.evaluate import student_sims
from eval.metrics import retrieval_metrics
from student.packed import PackedStudent, check_shared_trunks

log = logging.getLogger("itr_distill")

PACK_KIND = "packed"
WEIGHT_STEP = 0.1  # the simplex grid of the members' weights


def _members(paths: RunPaths, variant: str, seeds: list[int]) -> list[Path]:
    if len(set(seeds)) < 2:
        raise ValueError(f"a pack needs two or more seeds, got {seeds}")
    dirs = [paths.student(variant, s) for s in seeds]
    missing = [str(ModelDir(d).weights) for d in dirs if not ModelDir(d).weights.is_file()]
    if missing:
        raise FileNotFoundError(f"no trained student to pack: {', '.join(missing)} "
                                f"(train it first: `itr-distill distill --variant {variant} --seed N`)")
    return dirs


def stage_pack(cfg: Config, variant: str = "distilled", seeds: list[int] | None = None, force: bool = False) -> Path:
    """Pack the `variant` students of `seeds` (default: every seed of the experiment) into
    `students/<variant>-pack`, with weights chosen on the selection split."""
    from distill.models import load_model

    paths = RunPaths(cfg.run_dir)
    dirs = _members(paths, variant, list(seeds or cfg.experiment.seeds))
    selection = load_split(cfg, "val")
    sums = {d.name: sha256_file(ModelDir(d).weights) for d in dirs}
    out = paths.pack(variant)
    key = {"members": sums, "data": selection.fingerprint(), "step": WEIGHT_STEP}
    if not force and up_to_date(out, key):
        log.info("pack %s is up to date (%s)", out.name, out)
        return out
    device, bs = resolve_device(cfg.device), cfg.eval.batch_size
    members = [load_model(d, device) for d in dirs]
    check_shared_trunks(members, [d.name for d in dirs])  # before any scoring
    sims = [student_sims(m, selection, m.image_tower.preprocess(), bs, device,
                         frozen=frozen_for(m, selection, paths.features, bs, device)) for m in members]
    chosen = fit_ensemble(sims, selection.captions_per_image, step=WEIGHT_STEP, every_member=True)
    alone = [retrieval_metrics(s, selection.captions_per_image)["rsum"] for s in sims]
    shares = [w / s for w, s in zip(chosen.weights, chosen.stds, strict=True)]
    weights = [s / sum(shares) for s in shares]
    out.mkdir(parents=True, exist_ok=True)
    save_tensors({"weights": torch.tensor(weights)}, ModelDir(out).weights, metadata={"members": json.dumps(sums)})
    write_json(ModelDir(out).info, {
        "kind": PACK_KIND, "variant": f"{variant}-pack", "seed": None,
        "losses": read_json(ModelDir(dirs[0]).info).get("losses"),
        "selection": {"split": "val", "rsum": chosen.selection_rsum, "grid_step": WEIGHT_STEP},
        "members": [{"directory": d.name, "grid_weight": g, "std": s, "weight": w, "selection_rsum_alone": a,
                     "sha256": sums[d.name]}
                    for d, g, s, w, a in zip(dirs, chosen.weights, chosen.stds, weights, alone, strict=True)]})
    stamp(out, key)
    log.info("pack %s of %s: weights %s, selection rsum %.1f (alone: %s)", out.name, [d.name for d in dirs],
             chosen.weights, chosen.selection_rsum, ", ".join(f"{a:.1f}" for a in alone))
    return out


def load_pack(model_dir: Path, device: torch.device | str = "cpu") -> PackedStudent:
    """Rebuild a pack from its members beside it, refusing a member retrained since packing."""
    from distill.models import load_model

    files = ModelDir(model_dir)
    with safe_open(str(files.weights), "pt") as f:
        weights = f.get_tensor("weights").tolist()
        members = json.loads((f.metadata() or {}).get("members", "{}"))
    if len(members) != len(weights):
        raise ValueError(f"{files.weights}: {len(weights)} weights for {len(members)} members")
    dirs = [model_dir.parent / name for name in members]
    for d, expected in zip(dirs, members.values(), strict=True):
        if not ModelDir(d).weights.is_file():
            raise FileNotFoundError(f"{model_dir}: its member {ModelDir(d).weights} is missing")
        if sha256_file(ModelDir(d).weights) != expected:
            raise ValueError(f"{model_dir}: its member {d.name} changed since it was packed "
                             "(run `itr-distill pack` again)")
    pack = PackedStudent([load_model(d, device) for d in dirs], weights, [d.name for d in dirs])
    return pack.to(device).eval()
