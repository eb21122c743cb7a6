"""The pipeline's stages. Each reads and writes the files named in `core.run_layout`, so
each can run alone (`itr-distill <stage>`) and `run` can chain them, skipping the up-to-date ones."""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.config import Config, TextTowerConfig
from core.data.karpathy import read_karpathy
from core.data.loading import image_loader
from core.data.precomputed import read_precomputed
from core.data.records import CaptionSplit
from core.data.synthetic import IMAGE_DIR, JSON_NAME, generate
from core.data.validate import CheckCache
from core.devices import resolve_device
from core.distributed import RUN_DIR_SHARED, Ranks, all_see, local_device, ranks_from_env
from core.io import read_json, sha256_file, sha256_json, write_json
from core.precision import precision
from core.ranking import top_k_ids
from core.run_layout import ModelDir, RunPaths, stamp, up_to_date
from core.schema import stage_key, to_dict
from core.seeding import seed_everything
from core.towers.frozen import NODE_FEATURES, Frozen, frozen_for
from distill.first_stage import RUN_STUDENTS, first_stage
from distill.loop import Recipe, RunSpec, TrainData, fit
from distill.models import feature_dim, load_model, new_model, save_model_info, text_source
from distill.plan import require
from distill.teacher_runs import variant_run
from distill.terms import teacher_objective
from eval.bench import run_benchmark
from eval.bench_tables import write_bench_files
from eval.clip_benchmark import write_clip_benchmark
from eval.ensemble import fit_ensemble
from eval.evaluate import student_sims, teacher_split_metrics
from eval.examples import ExampleCollector
from eval.metrics import check_folds, retrieval_metrics
from eval.records import EvalResults, SystemResult
from eval.report import write_report
from eval.systems import onnx_result, rerank_results, student_result, teacher_result
from export.onnx_export import GateData, export_student
from export.runtime import MANIFEST as EXPORT_MANIFEST
from teacher.cache import MANIFEST, cache_identity, open_score_cache, write_score_cache
from teacher.ensemble import EnsembleSide, EnsembleTeacher, Standardised
from teacher.model import ScanTeacher
from teacher.scoring import Teacher, candidate_scorer, score_all
from teacher.tokens import TokenStore, build_token_store, open_token_store, token_identity
from teacher.topk import build_topk_cache, open_topk_cache, scores_from_dense, topk_identity

log = logging.getLogger("itr_distill")
ENSEMBLE_STEP = 0.1  # the weight grid of an ensemble teacher


# ---------------------------------------------------------------- data

def _synthetic_dir(cfg: Config) -> Path:
    return Path(cfg.data.path) if cfg.data.path else RunPaths(cfg.run_dir).data


def load_split(cfg: Config, which: str) -> CaptionSplit:
    """Our split `which` (train/val/test) of the configured dataset, with the configured limit.

    Every image is decoded (feature files checked for NaN/Inf) before any stage uses the split; the
    results are cached in the run directory, so only the first stage pays for the check.
    """
    data, paths = cfg.data, RunPaths(cfg.run_dir)
    names, limit = getattr(data.splits, which), getattr(data, f"limit_{which}")
    checks = CheckCache(paths.file_checks)
    if data.format == "precomputed":
        split = read_precomputed(data.path, names, which, data.captions_per_image, checks)
    elif data.format == "karpathy":
        split = read_karpathy(data.path, data.image_root, names, which, data.captions_per_image, data.skip_bad,
                              limit, checks)
    else:
        root = _synthetic_dir(cfg)
        if not (root / JSON_NAME).is_file():
            raise FileNotFoundError(f"{root / JSON_NAME}: synthetic dataset not generated yet; run `itr-distill data` first")
        split = read_karpathy(root / JSON_NAME, root / IMAGE_DIR, [which], which, data.captions_per_image,
                              data.skip_bad, limit, checks)
    if split.skipped:
        log.warning("%s: left out %d bad image entries of %s (data.skip_bad); the data stage lists them in %s",
                    which, len(split.skipped), split.source, paths.bad_data)
    return split.head(limit)


def stage_data(cfg: Config, force: bool = False) -> dict[str, Any]:
    """Generate the synthetic dataset if needed, then read and check all three splits."""
    require(cfg, "data")
    paths = RunPaths(cfg.run_dir)
    if cfg.data.format == "synthetic":
        root, spec = _synthetic_dir(cfg), to_dict(cfg.data.synthetic)
        if force or not up_to_date(root, spec):
            if root.is_dir() and any(root.iterdir()) and not (root / JSON_NAME).is_file():
                raise FileExistsError(f"{root}: not empty and not a generated dataset; refusing to replace it "
                                      "(choose another data.path)")
            log.info("generating synthetic scenes in %s", root)
            s = cfg.data.synthetic
            generate(root, s.n_train, s.n_val, s.n_test, s.image_size, s.family_size, s.min_objects, s.max_objects, s.seed)
            stamp(root, spec)
    summary, bad, loaded = {}, {}, {}
    for which in ("train", "val", "test"):
        split = loaded[which] = load_split(cfg, which)
        summary[which] = {"images": split.n_images, "captions": split.n_captions, "source": split.source,
                          "fingerprint": split.fingerprint(), "skipped": len(split.skipped)}
        bad[which] = {"source": split.source, "count": len(split.skipped),
                      "entries": [dataclasses.asdict(b) for b in split.skipped]}
        log.info("%s: %d images, %d captions (%s)", which, split.n_images, split.n_captions, split.source)
    check_disjoint(loaded)
    write_json(paths.data_summary, summary)
    write_json(paths.bad_data, {"skip_bad": cfg.data.skip_bad, "splits": bad})
    return summary


def check_disjoint(splits: dict[str, CaptionSplit]) -> None:
    """Refuse a train split that shares images with val or test (selection or the report would see
    training images); warn when val is the reported split, since selection then flatters the report."""
    if splits["train"].image_paths is None:
        return
    train = set(splits["train"].image_paths)
    for which in ("val", "test"):
        shared = train.intersection(splits[which].image_paths or ())
        if shared:
            raise ValueError(f"data.splits: {which} shares {len(shared)} images with train (e.g. {min(shared)}); "
                             f"slice the source split, e.g. train: ['train[:-250]'] and val: ['train[-250:]']")
    if set(splits["val"].image_paths) & set(splits["test"].image_paths or ()):
        log.warning("data.splits: val overlaps test, so model selection uses the split the report shows")


# ---------------------------------------------------------------- teacher

def stage_teacher_fit(cfg: Config, force: bool = False, resume: bool = False) -> Path:
    """Fit the teacher with the VSE++ hinge; keeps the best validation epoch. `resume` continues an
    interrupted fit from its latest checkpoint. With `teacher.ensemble`, then each member and the
    ensemble's weights (returns the ensemble's directory). Under torchrun each rank encodes its share
    of every global batch, the encoded sides are gathered and scored on the global batch; rank 0
    validates and writes."""
    require(cfg, "teacher fit")
    device = resolve_device(cfg.device)
    ranks = ranks_from_env(backend=training_backend(device), run_dir=cfg.run_dir)
    device = local_device(device)
    out = _fit_teacher(cfg, force, resume, device, ranks)
    return _fit_ensemble(cfg, force, device, ranks) if cfg.teacher.ensemble else out


def training_backend(device: torch.device) -> str:
    """The process group a torchrun training joins: NCCL on CUDA, gloo elsewhere."""
    return "nccl" if device.type == "cuda" else "gloo"


def shared_text_source(paths: RunPaths, tower: TextTowerConfig, train: CaptionSplit, ranks: Ranks = Ranks()) -> str:
    """`text_source`; under torchrun rank 0 builds a missing scratch text model before the other ranks read it."""
    if ranks.is_main:
        text_source(paths, tower, train)
    ranks.barrier()
    return text_source(paths, tower, train)


def _fit_teacher(cfg: Config, force: bool, resume: bool = False, device: torch.device | None = None,
                 ranks: Ranks = Ranks()) -> Path:
    """Fit the single teacher `cfg.teacher` describes into the run's `teacher/` (sharded over `ranks`)."""
    paths, out = RunPaths(cfg.run_dir), RunPaths(cfg.run_dir).teacher
    train, val = load_split(cfg, "train"), load_split(cfg, "val")
    key = {"data": train.fingerprint(), "teacher": stage_key(cfg.teacher), "seed": cfg.seed}
    if not force and up_to_date(out, key):
        log.info("teacher is up to date (%s)", out)
        return out
    device = device or resolve_device(cfg.device)
    text_model = shared_text_source(paths, cfg.teacher.text_tower, train, ranks)
    seed_everything(cfg.seed)
    teacher = new_model("teacher", cfg.teacher, text_model, feature_dim(train)).to(device)  # built on the CPU
    if ranks.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_model_info(out, "teacher", cfg.teacher, text_model, feature_dim(train), seed=cfg.seed)
    pre, bs = teacher.image_tower.preprocess(), cfg.eval.batch_size
    frozen_val = frozen_for(teacher, val, paths.features, bs, device) if ranks.is_main else (None, None)

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        return teacher_split_metrics(model, val, pre, bs, device, False, frozen_val)[0]

    recipe = Recipe(teacher_objective(cfg.teacher), lr_scales={"image_tower": cfg.teacher.image_tower.lr_scale,
                                                               "text_tower": cfg.teacher.text_tower.lr_scale})
    data = TrainData(train, pre, frozen_shared(teacher, train, paths.features, bs, device, ranks), paths.images)
    run = RunSpec(out, cfg.seed, device, ranks, identity=sha256_json(key), resume=resume, desc="teacher")
    if ranks.is_main and ranks.world > 1:
        log.info("teacher: fitting over %d torchrun ranks, %d pairs of each global batch of %d per rank", ranks.world,
                 cfg.teacher.train.batch_size // ranks.world, cfg.teacher.train.batch_size)
    result = fit(teacher, recipe, data, cfg.teacher.train, run, evaluate)
    if ranks.is_main:
        log.info("teacher: epoch %d selected, val rsum %.1f", result.selected_epoch,
                 result.selected_metrics.get("rsum", float("nan")))
        stamp(out, key)
    ranks.barrier()  # every rank sees the stamp before it goes on
    return out


def _fit_ensemble(cfg: Config, force: bool, device: torch.device | None = None, ranks: Ranks = Ranks()) -> Path:
    """Fit the members of the ensemble `teacher.ensemble` names (each at the run's seed, in its own run
    directory, sharded over `ranks`) and choose each one's standardisation and weight on the selection
    split (val), on rank 0 while the other ranks wait."""
    members = cfg.experiment.teacher_ensembles[cfg.teacher.ensemble]
    configs = [variant_run(cfg, m, cfg.seed) for m in members]
    checkpoints = [ModelDir(_fit_teacher(c, force, device=device, ranks=ranks)).weights for c in configs]
    if ranks.is_main:
        _ensemble_weights(cfg, force, members, configs, checkpoints, device or resolve_device(cfg.device))
    ranks.barrier()
    return RunPaths(cfg.run_dir).teacher_ensemble


def _ensemble_weights(cfg: Config, force: bool, members: list[str], configs: list[Config], checkpoints: list[Path],
                      device: torch.device) -> Path:
    """The ensemble's weights from its fitted members' scores of val (`_fit_ensemble`)."""
    paths, name = RunPaths(cfg.run_dir), cfg.teacher.ensemble
    val = load_split(cfg, "val")
    key = {"ensemble": name, "data": val.fingerprint(), "step": ENSEMBLE_STEP,
           "members": {m: sha256_file(c) for m, c in zip(members, checkpoints, strict=True)}}
    out = paths.teacher_ensemble
    if not force and up_to_date(out, key):
        log.info("teacher ensemble %s is up to date (%s)", name, out)
        return out
    sims = []
    for member in configs:
        teacher, store = single_teacher_tokens(member, "val", val, device)
        sims.append(score_all(teacher, store.images, store.captions, cfg.scores.block_gib, False, cfg.scores.bf16))
    chosen = fit_ensemble(sims, val.captions_per_image, step=ENSEMBLE_STEP)
    out.mkdir(parents=True, exist_ok=True)
    write_json(paths.ensemble_spec, {
        "name": name, "selection": {"split": "val", "rsum": chosen.selection_rsum},
        "members": [{"name": m, "directory": os.path.relpath(c.parent, paths.root), "sha256": key["members"][m],
                     "weight": t.weight, "mean": t.mean, "std": t.std}
                    for m, c, t in zip(members, checkpoints, chosen.terms, strict=True)]})
    stamp(out, key)
    log.info("teacher ensemble %s: weights %s, selection rsum %.1f", name,
             dict(zip(members, chosen.weights, strict=True)), chosen.selection_rsum)
    return out


def teacher_hash(cfg: Config) -> str:
    """The run's teacher as cache manifests and student keys name it: the configured teacher's
    checkpoint, or the ensemble's weights file (which names each member's checkpoint)."""
    paths = RunPaths(cfg.run_dir)
    if cfg.teacher.ensemble:
        return sha256_file(paths.ensemble_spec)
    return sha256_file(ModelDir(paths.teacher).weights)


def _cache_identity(cfg: Config, split: CaptionSplit) -> dict[str, Any]:
    return cache_identity(teacher_hash(cfg), split.fingerprint(), split.name, split.n_images, split.n_captions)


def frozen_shared(model: torch.nn.Module, split: CaptionSplit, root: Path, batch_size: int, device: torch.device,
                  ranks: Ranks = Ranks()) -> Frozen:
    """Frozen-tower outputs; rank 0 computes a missing cache before the other ranks read it. Under
    torchrun with $ITR_DISTILL_NODE_FEATURES set, the cache lives in that (node-local) directory
    instead of `root`, and each machine's local rank 0 computes its own copy."""
    node_local = os.environ.get(NODE_FEATURES) if ranks.world > 1 else None
    if node_local:
        root, builds = Path(node_local), ranks.local_rank == 0
        writer, need = "local rank 0 of its node", f"${NODE_FEATURES} must name the same directory for every rank of a node"
    else:
        builds, writer, need = ranks.is_main, "rank 0", RUN_DIR_SHARED
    frozen = frozen_for(model, split, root, batch_size, device) if builds else None
    ranks.barrier()
    missing = None
    if not builds:
        try:
            frozen = frozen_for(model, split, root, batch_size, device, build=False)
        except FileNotFoundError as exc:
            missing = Path(exc.filename)
    all_see(missing, ranks, writer, need)
    return frozen


def teacher_tokens(cfg: Config, which: str, split: CaptionSplit, device: torch.device, ranks: Ranks = Ranks(),
                   force: bool = False) -> tuple[Teacher, TokenStore]:
    """The run's teacher and its token store of `split` (our split `which`, as the caller loaded it),
    built when missing or made for another teacher or dataset; under torchrun the ranks share the
    encoding. An ensemble reads each member's store (members of weight 0 are left out)."""
    if not cfg.teacher.ensemble:
        return single_teacher_tokens(cfg, which, split, device, ranks, force)
    spec, used = _ensemble_members(cfg)
    pairs = [single_teacher_tokens(variant_run(cfg, m["name"], cfg.seed), which, split, device, ranks, force, m["sha256"])
             for m in used]
    stores = [store for _, store in pairs]
    return (_ensemble(spec, used, [teacher for teacher, _ in pairs]),
            TokenStore(EnsembleSide([s.images for s in stores]), EnsembleSide([s.captions for s in stores])))


def load_teacher(cfg: Config, device: torch.device | str) -> Teacher:
    """The run's teacher, what it distils from, evaluates and re-ranks with: the one fitted in `teacher/`,
    or `teacher.ensemble`'s members with their chosen weights."""
    if not cfg.teacher.ensemble:
        return load_model(RunPaths(cfg.run_dir).teacher, device)
    spec, used = _ensemble_members(cfg)
    return _ensemble(spec, used, [load_model(RunPaths(variant_run(cfg, m["name"], cfg.seed).run_dir).teacher, device)
                                  for m in used])


def _ensemble_members(cfg: Config) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ensemble's weights file and its members of weight > 0, each checked to be the checkpoint the
    weights were chosen for."""
    file = RunPaths(cfg.run_dir).ensemble_spec
    if not file.is_file():
        raise FileNotFoundError(f"{file}: the ensemble {cfg.teacher.ensemble!r} has no weights yet "
                                "(run `itr-distill teacher fit`)")
    spec = read_json(file)
    for member in spec["members"]:  # a member of weight 0 took part in choosing the others' weights
        checkpoint = ModelDir(RunPaths(variant_run(cfg, member["name"], cfg.seed).run_dir).teacher).weights
        if sha256_file(checkpoint) != member["sha256"]:
            raise ValueError(f"{checkpoint}: refitted since the weights in {file} were chosen "
                             "(run `itr-distill teacher fit` to choose them again)")
    return spec, [m for m in spec["members"] if m["weight"] > 0]


def _ensemble(spec: dict[str, Any], used: list[dict[str, Any]], members: list[ScanTeacher]) -> EnsembleTeacher:
    return EnsembleTeacher(members, [Standardised(m["weight"], m["mean"], m["std"]) for m in used], spec["name"],
                           [m["name"] for m in used])


def single_teacher_tokens(cfg: Config, which: str, split: CaptionSplit, device: torch.device, ranks: Ranks = Ranks(),
                   force: bool = False, checkpoint_sha256: str | None = None) -> tuple[ScanTeacher, TokenStore]:
    """`teacher_tokens` of the single teacher fitted in the run's `teacher/` (whose checkpoint hash the
    caller may already know)."""
    paths = RunPaths(cfg.run_dir)
    identity = token_identity(checkpoint_sha256 or sha256_file(ModelDir(paths.teacher).weights), split.fingerprint(), split.name,
                              split.n_images, split.n_captions, cfg.scores.token_dtype)
    out = paths.teacher_tokens(which)
    teacher = load_model(paths.teacher, device)
    try:
        if not force:
            return teacher, open_token_store(out, identity, device)
    except (OSError, ValueError) as exc:
        log.info("building the teacher's token store of %s (%s)", which, str(exc).splitlines()[0])
    bs = cfg.eval.batch_size
    frozen = frozen_shared(teacher, split, paths.features, bs, device, ranks)
    build_token_store(teacher, split, out, identity, teacher.image_tower.preprocess(), bs, device, frozen, ranks,
                      progress=ranks.is_main, block_rows=cfg.scores.shard_queries)
    log.info("teacher token store of %s: %d images, %d captions in %s", which, split.n_images, split.n_captions, out)
    return teacher, open_token_store(out, identity, device)


def stage_teacher_tokens(cfg: Config, which: str = "train", force: bool = False) -> Path:
    """Build (or check) the teacher's token store of a split; shards the encoding under torchrun."""
    require(cfg, f"teacher tokens {which}")
    device = local_device(resolve_device(cfg.device))
    teacher_tokens(cfg, which, load_split(cfg, which), device, ranks_from_env(run_dir=cfg.run_dir), force)
    return RunPaths(cfg.run_dir).teacher_tokens(which)


def stage_teacher_score(cfg: Config, which: str = "train", force: bool = False) -> Path:
    """Score every image-caption pair of a split with the teacher into a score cache, reading its
    token store in blocks of scores.block_gib and writing the scores straight into the cache file."""
    require(cfg, f"teacher score {which}")
    paths = RunPaths(cfg.run_dir)
    split = load_split(cfg, which)
    identity = _cache_identity(cfg, split)
    out = paths.scores(which)
    if not force and (out / MANIFEST).is_file():
        try:
            open_score_cache(out, identity)
            log.info("score cache for %s is up to date (%s)", which, out)
            return out
        except ValueError as exc:
            log.info("rescoring: %s", exc)
    teacher, store = teacher_tokens(cfg, which, split, resolve_device(cfg.device))
    write_score_cache(out, identity, lambda scores: score_all(teacher, store.images, store.captions,
                                                              cfg.scores.block_gib, bf16=cfg.scores.bf16, out=scores))
    log.info("scored %d x %d pairs of %s into %s", split.n_images, split.n_captions, which, out)
    return out


def topk_identity_for(cfg: Config, paths: RunPaths, split: CaptionSplit, device: torch.device) -> dict[str, Any]:
    """The manifest identity a top-K cache of `split` must have for this config."""
    generator = first_stage(cfg.scores.generator, paths, cfg.experiment.seeds[0])
    return topk_identity(teacher_hash(cfg), split.fingerprint(), split.name,
                         split.n_images, split.n_captions, cfg.scores.top_k, generator.identity,
                         precision(device, cfg.scores.bf16))


def stage_teacher_topk(cfg: Config, which: str = "train", force: bool = False) -> Path:
    """Each caption's and each image's top-K candidates from the first-stage dual encoder, scored by the
    teacher. Resumable; under torchrun every rank scores its share of the parts and rank 0 merges."""
    k = cfg.scores.top_k
    if k <= 0:
        raise ValueError("scores.top_k is 0: set it (e.g. --set scores.top_k=100) to build a top-K cache")
    require(cfg, f"teacher score {which}-topk")
    paths, ranks = RunPaths(cfg.run_dir), ranks_from_env(run_dir=cfg.run_dir)
    split = load_split(cfg, which)
    if k > min(split.n_images, split.n_captions):
        raise ValueError(f"scores.top_k={k} exceeds the split '{which}' ({split.n_images} images, "
                         f"{split.n_captions} captions)")
    device = local_device(resolve_device(cfg.device))
    generator = first_stage(cfg.scores.generator, paths, cfg.experiment.seeds[0])
    identity = topk_identity_for(cfg, paths, split, device)
    out = paths.topk_scores(which)
    if not force and (out / MANIFEST).is_file():
        try:
            open_topk_cache(out, identity)
            log.info("top-%d score cache for %s is up to date (%s)", k, which, out)
            return out
        except ValueError as exc:
            log.info("rescoring: %s", exc)

    def candidates() -> dict[str, np.ndarray]:
        images, captions = generator.embed(split, paths, cfg.eval.batch_size, device)
        return {"t2i": top_k_ids(captions, images, k)[0], "i2t": top_k_ids(images, captions, k)[0]}

    try:  # the all-pairs cache of the same teacher already holds every score: gather instead of scoring
        scorer = scores_from_dense(open_score_cache(paths.scores(which), _cache_identity(cfg, split)))
        log.info("top-%d scores of %s gathered from its all-pairs cache", k, which)
    except (OSError, ValueError):
        teacher, store = teacher_tokens(cfg, which, split, device, ranks)
        scorer = candidate_scorer(teacher, store.images, store.captions, cfg.scores.bf16)
    counts = build_topk_cache(out, identity, candidates, scorer, cfg.scores.shard_queries, ranks, progress=ranks.is_main,
                              source={"generator_path": str(generator.directory)}, fresh=force)
    log.info("rank %d of %d: scored %d parts, reused %d; top-%d cache of %s in %s", ranks.rank, ranks.world,
             counts["scored"], counts["reused"], k, which, out)
    return out


# ---------------------------------------------------------------- export, eval, bench, report

def _gate_data(cfg: Config, student) -> GateData:
    """Held-out images (or region features) with their captions from the evaluation split, for the export gates."""
    split = load_split(cfg, cfg.eval.split).head(cfg.export.gate_images)
    batches = list(image_loader(split, student.image_tower.preprocess(), cfg.eval.batch_size))
    images = torch.cat([b.images for b in batches]).numpy()
    mask = None if batches[0].image_mask is None else torch.cat([b.image_mask for b in batches]).numpy()
    return GateData(images, mask, list(split.captions), split.captions_per_image)


def stage_export(cfg: Config, student_dir: str | Path | None = None, force: bool = False) -> Path:
    """Export a student (default: the distilled student of the first seed) to ONNX behind the parity gate."""
    require(cfg, "export")
    paths = RunPaths(cfg.run_dir)
    student_dir = Path(student_dir) if student_dir else paths.student("distilled", cfg.experiment.seeds[0])
    weights = ModelDir(student_dir).weights
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no trained student to export (run `itr-distill distill` first)")
    key = {"source": sha256_file(weights), "export": to_dict(cfg.export)}
    if not force and up_to_date(paths.export, key):
        log.info("export is up to date (%s)", paths.export)
        return paths.export
    student = load_model(student_dir, "cpu")
    manifest = export_student(student, paths.export, cfg.export, student.image_tower.preprocess(),
                              _gate_data(cfg, student), weights, retrieval_metrics)
    stamp(paths.export, key)
    for name, entry in manifest["variants"].items():
        gate = entry["gate"]
        log.info("exported %s %s: min cosine image %.6f text %.6f, R@1 drop %.1f on %d held-out images", student_dir.name,
                 name, gate["min_cosine"]["image"], gate["min_cosine"]["text"], gate["r1_drop"], gate["retrieval"]["images"])
    return paths.export


def _export_source(paths: RunPaths) -> Path:
    """The student directory an export was made from (recorded in its manifest), in this run directory if it
    is there: the run may have moved since the export, or be read from another working directory."""
    recorded = Path(read_json(paths.export / EXPORT_MANIFEST)["source_checkpoint"]["path"]).parent
    here = paths.students / recorded.name
    return here if here.is_dir() else recorded


def _student_dirs(cfg: Config) -> list[Path]:
    paths = RunPaths(cfg.run_dir)
    variants = RUN_STUDENTS if cfg.experiment.baseline else ("distilled",)
    dirs = [paths.student(v, s) for s in cfg.experiment.seeds for v in variants] + [paths.pack(v) for v in variants]
    return [d for d in dirs if ModelDir(d).weights.is_file()]


def _rerank_source(cfg: Config, paths: RunPaths) -> str:
    """The student whose top-K the teacher re-ranks: the exported one, else the first seed's distilled one."""
    if (paths.export / EXPORT_MANIFEST).is_file():
        return _export_source(paths).name
    return paths.student("distilled", cfg.experiment.seeds[0]).name


def stage_eval(cfg: Config) -> EvalResults:
    """Metrics of the teacher (scored from its token store of the split), every trained student, student
    top-K re-ranked by the teacher, and the ONNX export on the evaluation split."""
    require(cfg, "eval")
    paths = RunPaths(cfg.run_dir)
    split = load_split(cfg, cfg.eval.split)
    device = resolve_device(cfg.device)
    bs, folds = cfg.eval.batch_size, cfg.eval.protocols
    check_folds(split.n_images, folds, cfg.eval.split)  # before any scoring
    systems: list[SystemResult] = []
    examples = ExampleCollector(split, cfg.seed)
    teacher = None
    if ModelDir(paths.teacher).weights.is_file():
        teacher, store = teacher_tokens(cfg, cfg.eval.split, split, device)
        result, teacher_scores = teacher_result(teacher, store.images, store.captions, split, cfg.seed, folds,
                                                cfg.scores.block_gib, cfg.scores.bf16, cfg.scores.token_dtype)
        systems.append(result)
        examples.add_scorer("teacher", teacher_scores)
    rerank_source = _rerank_source(cfg, paths)
    shown = {paths.student(v, cfg.experiment.seeds[0]).name for v in RUN_STUDENTS}
    for student_dir in _student_dirs(cfg):
        student = load_model(student_dir, device)
        sims = student_sims(student, split, student.image_tower.preprocess(), bs, device,
                            frozen=frozen_for(student, split, paths.features, bs, device))
        result = student_result(student_dir.name, read_json(ModelDir(student_dir).info), sims, split, folds)
        systems.append(result)
        if result.name in shown:
            examples.add_sims(result.name, sims)
        if teacher is not None and student_dir.name == rerank_source:
            systems += rerank_results(result, sims, teacher_scores, split, cfg.eval.rerank_k,
                                      cfg.eval.rerank_student_weight, folds)
    if (paths.export / EXPORT_MANIFEST).is_file():
        source = _export_source(paths).name
        pytorch = next((s for s in systems if s.name == source), None)
        systems += [onnx_result(str(paths.export), variant, split, bs, folds, source, pytorch,
                                getattr(cfg.export.gate, variant).max_r1_drop)
                    for variant in read_json(paths.export / EXPORT_MANIFEST).get("variants", {})]
    if not systems:
        raise FileNotFoundError(f"{paths.root}: nothing to evaluate yet (no teacher, students or export)")
    results = EvalResults(cfg.eval.split, folds, split.n_images, split.captions_per_image, systems)
    results.write(paths.eval_results)
    write_clip_benchmark(results, paths, cfg.data.format, cfg.data.path)
    write_json(paths.eval_examples, examples.to_dict("teacher", paths.student("distilled", cfg.experiment.seeds[0]).name))
    for s in systems:
        log.info("%-22s rsum %.1f", s.name, s.rsum)
    return results


def stage_bench(cfg: Config) -> dict[str, Any]:
    """Latency of the run's teacher (an ensemble's: all its members), the PyTorch student and the ONNX student
    on this machine."""
    require(cfg, "bench")
    paths = RunPaths(cfg.run_dir)
    teacher, student = load_teacher(cfg, "cpu"), load_model(_export_source(paths), "cpu")
    split = load_split(cfg, cfg.eval.split)
    try:  # the student's cached tower outputs of the split (eval made them), to embed the gallery from
        frozen_images = frozen_for(student, split, paths.features, cfg.eval.batch_size, torch.device("cpu"), build=False)[0]
    except FileNotFoundError:
        frozen_images = None
    result = run_benchmark(teacher, student, paths.export, split, student.image_tower.preprocess(), cfg.bench,
                           cfg.eval.rerank_k, cfg.eval.rerank_student_weight, frozen_images)
    write_json(paths.bench, result)
    write_bench_files(result, paths.bench.parent)
    for row in result["rows"]:
        log.info("%-16s %-8s %-11s %-9s %-4s p50 %.2f ms", row["measure"], row["system"], row["backend"],
                 row.get("variant") or "", row["device"], row["p50_ms"])
    return result


def stage_report(run_dir: str | Path, command: str) -> dict[str, Any]:
    summary = write_report(run_dir, command)
    log.info("report written to %s", RunPaths(run_dir).report)
    return summary
