"""The plan: what every stage of a run will read, write and hold, worked out from the data's shapes
and the config before any stage does work, so that a run that cannot fit is refused at once, naming
what to change, instead of failing hours in.

Shapes come from headers only (the Karpathy JSON's entries, a feature file's .npy header, the
caption file's line count), never from decoding images or reading features. The estimates are a
cost model, not a measurement: peak memory counts the arrays a stage's largest step holds (model
and optimiser state, the saved activations of the cross attention, the evaluation matrices, the
batching tables) on top of the process's libraries; memory-mapped files are not counted, as the
kernel can drop their pages. `itr-distill plan CONFIG` prints it; the scale rehearsal compares it
with what each stage measured.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.config import Config, ImageTowerConfig, StudentConfig, TeacherConfig
from core.data.batching import NEIGHBOUR_BLOCK_BYTES
from core.data.split_names import selected
from core.paths import resolve_path
from core.run_layout import RunPaths
from core.schema import stage_key
from distill.teacher_runs import fitted_teachers
from distill.terms import uses_teacher
from distill.variants import variant_config
from eval.examples import teacher_pairs as example_pairs
from eval.metrics import scored_folds

GIB = 2**30
RUN = RunPaths(".")  # paths relative to the run directory, as plans name what a stage reads and writes
LIBRARIES = int(0.6 * GIB)  # a stage process with torch, transformers, timm and onnx imported (RssAnon, measured)
CAPTION_BYTES = 160  # a caption as a Python str in the split's tuple, with its share of the tuple
SAVED_PER_LOGIT = 6  # float32 tensors of the shape of the cross attention's logits kept for the backward pass
BOW_DIM = 2048  # core.data.batching.hashed_bow
# A training stage's working set beyond the parts counted (batches, tokeniser, autograd buffers, allocator
# slack): the growth measured in the rehearsal's student stages at 3,000 and 12,000 images, less those parts.
TRAINING_WORKSPACE = int(0.25 * GIB)
CALIBRATION_BATCHES = 32  # distill.losses.calibrated_teacher_temperature's sampled batches


class PlanError(ValueError):
    """A stage would exceed a limit; the message names the limit and what to change."""


@dataclass(frozen=True)
class SplitShape:
    images: int
    captions: int


@dataclass
class StagePlan:
    """One stage: what it reads and writes, its disk writes, its peak memory (by part) and the teacher pairs it scores."""

    name: str
    reads: list[str]
    writes: list[str]
    disk_bytes: int = 0
    memory: dict[str, int] = field(default_factory=dict)  # part -> bytes, besides the libraries
    teacher_pairs: int = 0
    knobs: dict[str, str] = field(default_factory=dict)  # part -> the setting that sizes it

    @property
    def peak_bytes(self) -> int:
        return LIBRARIES + sum(self.memory.values())


@dataclass
class Plan:
    stages: list[StagePlan]
    memory_limit: int
    disk_limit: int
    disk_where: str
    kd_source: str | None
    problems: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"stages": [{**asdict(s), "peak_bytes": s.peak_bytes} for s in self.stages],
                "memory_limit": self.memory_limit, "disk_limit": self.disk_limit, "disk_where": self.disk_where,
                "kd_source": self.kd_source, "problems": self.problems}

    def table(self) -> str:
        """The plan as a Markdown table with the limits and the problems under it."""
        lines = ["| stage | reads | writes | disk | peak memory | teacher pairs |", "|---|---|---|---|---|---|"]
        for s in self.stages:
            lines.append(f"| {s.name} | {', '.join(s.reads)} | {', '.join(s.writes)} | {_size(s.disk_bytes)} | "
                         f"{_size(s.peak_bytes)} | {s.teacher_pairs:.3g} |")
        lines += ["", f"disk written in all: {_size(sum(s.disk_bytes for s in self.stages))} (limit {_size(self.disk_limit)}, "
                  f"{self.disk_where}); peak memory limit {_size(self.memory_limit)}; in-batch KD's teacher scores: "
                  f"{self.kd_source or 'not used'}"]
        return "\n".join(lines + ([f"REFUSED: {p}" for p in self.problems] or ["the plan fits its limits"]))


def _name(path: Path, suffix: str = "") -> str:
    return path.as_posix() + suffix


def _size(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= 0.1 * GIB else f"{n / 2**20:.1f} MiB"


# ------------------------------------------------------------------ shapes, from headers only

def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))


def split_shapes(cfg: Config) -> dict[str, SplitShape]:
    """Images and captions of train / val / test, limits applied, without reading images or features."""
    data, k, out = cfg.data, cfg.data.captions_per_image, {}
    entry_splits: list = []
    if data.format == "karpathy":
        entry_splits = [image.get("split") if isinstance(image, dict) and isinstance(image.get("split"), str) else None
                        for image in json.loads(Path(data.path).read_text(encoding="utf-8")).get("images", [])]
    for which in ("train", "val", "test"):
        names = getattr(data.splits, which)
        if data.format == "synthetic":
            n = getattr(data.synthetic, f"n_{which}")
        elif data.format == "karpathy":
            n = sum(selected(entry_splits, names))
        else:
            n = 0
            for name in names:
                ims = Path(data.path) / f"{name}_ims.npy"
                if ims.exists():
                    rows = int(np.load(ims, mmap_mode="r").shape[0])
                    caps = Path(data.path) / f"{name}_caps.txt"
                    n += rows // k if k > 1 and caps.is_file() and _count_lines(caps) == rows else rows
        limit = getattr(data, f"limit_{which}")
        n = min(n, limit) if limit else n
        out[which] = SplitShape(n, n * k)
    return out


def _feature_shape(cfg: Config) -> tuple[int, int] | None:
    """(regions, dim) of a precomputed set's first feature file."""
    if cfg.data.format != "precomputed":
        return None
    for name in [*cfg.data.splits.train, *cfg.data.splits.val, *cfg.data.splits.test]:
        path = Path(cfg.data.path) / f"{name}_ims.npy"
        if path.exists():
            shape = np.load(path, mmap_mode="r").shape
            return int(shape[1]), int(shape[2])
    return None


# ------------------------------------------------------------------ model sizes

@dataclass(frozen=True)
class ModelSize:
    image_tokens: int  # tokens per image the matcher / alignment sees
    image_width: int
    text_width: int
    trainable: int  # parameters
    frozen: int
    image_frozen: bool
    text_frozen: bool
    cached_image_tokens: int = 0  # the frozen trunk's output per image (its cut, or the tower's own)
    cached_image_width: int = 0


def _text_size(model_cfg: TeacherConfig | StudentConfig) -> tuple[int, int, int]:
    """(width, parameters, parameters of the `train_top` layers) of a text tower, from its config.json
    (or the scratch settings)."""
    tower = model_cfg.text_tower
    if tower.model == "scratch":
        s = tower.scratch
        h, layers, vocab, inner = s.hidden_size, s.num_layers, s.vocab_size, s.intermediate_size
    else:
        try:
            conf = json.loads((Path(resolve_path(tower.model)) / "config.json").read_text(encoding="utf-8"))
            h, layers = int(conf["hidden_size"]), int(conf["num_hidden_layers"])
            vocab, inner = int(conf.get("vocab_size", 30522)), int(conf.get("intermediate_size", 4 * h))
        except (OSError, KeyError, ValueError):  # all-MiniLM-L6-v2, when it cannot be looked at without loading it
            h, layers, vocab, inner = 384, 6, 30522, 1536
    layer = 4 * h * h + 2 * h * inner
    return h, vocab * h + layers * layer, min(tower.train_top, layers) * layer


def model_size(cfg: Config, model_cfg: TeacherConfig | StudentConfig) -> ModelSize:
    """Token counts, widths and parameter counts, from timm on the meta device (no weights, no compute)."""
    tower = model_cfg.image_tower
    features = _feature_shape(cfg)
    if tower.kind == "features" or features is not None:
        tokens, width = features or (36, 2048)
        image_params, image_top, cached = 0, 0, (tokens, width)
    else:
        tokens, width, image_params, image_top, cached = _timm_size(tower)
    text_width, text_params, text_top = _text_size(model_cfg)
    d = model_cfg.embed_dim
    pooling = getattr(model_cfg, "image_pooling", "tower")
    heads = (tokens * width if pooling == "flatten" else width) * d + text_width * d + 2 * width * d
    trainable = heads + (image_top if tower.freeze else image_params) + \
        (text_top if model_cfg.text_tower.freeze else text_params)
    frozen = (image_params - image_top if tower.freeze else 0) + \
        (text_params - text_top if model_cfg.text_tower.freeze else 0)
    return ModelSize(tokens, width, text_width, trainable, frozen, tower.freeze or image_params == 0,
                     model_cfg.text_tower.freeze, *cached)


def _timm_size(tower: ImageTowerConfig) -> tuple[int, int, int, int, tuple[int, int]]:
    """(tokens, width, parameters, trainable parameters of the top (`train_top` stages, `fine_tokens`
    projection), (tokens, width) at the cut) of a timm tower, run on the meta device."""
    import timm
    import torch

    from core.towers.image import backbone_stages

    with torch.device("meta"):
        net = timm.create_model(tower.name, pretrained=False, **{**tower.model_kwargs, "num_classes": 0})  # as the tower
        size = tower.image_size or int(net.default_cfg.get("input_size", (3, 224, 224))[-1])
        tokens = (-(-size // int(net.feature_info[-1]["reduction"]))) ** 2
        width, params = int(net.num_features), sum(p.numel() for p in net.parameters())
        for also in tower.also:  # further backbones (`also`, never cut): their channels follow on every token
            extra = timm.create_model(also.name, pretrained=False, **{**also.model_kwargs, "num_classes": 0})
            width, params = width + int(extra.num_features), params + sum(p.numel() for p in extra.parameters())
        if not tower.train_top:
            return tokens, width, params, 0, (tokens, width)
        stem, stages, tail = backbone_stages(net)
        x = torch.empty(1, 3, size, size)
        for module in stem + stages[:-tower.train_top]:
            x = module(x)
    top = sum(p.numel() for m in stages[-tower.train_top:] + tail for p in m.parameters())
    cut = (int(x.shape[2] * x.shape[3]), int(x.shape[1]))
    if tower.fine_tokens:  # the cut's tokens follow the final ones, through a trained Linear(cut width, width)
        fine = cut[1] * width + width
        tokens, params, top = tokens + cut[0], params + fine, top + fine
    return tokens, width, params, top, cut


# ------------------------------------------------------------------ the stages

def kd_source(cfg: Config, n_images: int, n_captions: int) -> str:
    """'cache' or 'online': scores.kd_source, with 'auto' taking the cache when it fits scores.max_dense_gib."""
    if cfg.scores.kd_source != "auto":
        return cfg.scores.kd_source
    return "cache" if n_images * n_captions * 4 <= cfg.scores.max_dense_gib * GIB else "online"


def kd_teacher_stage(cfg: Config, shapes: dict[str, SplitShape] | None = None) -> str | None:
    """The stage that gives in-batch KD its teacher scores: the all-pairs cache, or the token store the
    online teacher reads; None when the configured student has no KD."""
    if not uses_teacher(variant_config(cfg, "distilled").losses):
        return None
    train = (shapes or split_shapes(cfg))["train"]
    return "teacher tokens train" if kd_source(cfg, train.images, train.captions) == "online" else "teacher score train"


def _training(stage: StagePlan, model_cfg: TeacherConfig | StudentConfig, size: ModelSize, train: SplitShape,
              val: SplitShape, teacher: bool, runs: int = 1) -> None:
    """Memory and disk of a training stage, shared by the teacher fit and every student (`runs`: one per seed)."""
    t, b = model_cfg.train, model_cfg.train.batch_size
    words = model_cfg.text_tower.max_length
    stage.memory["model and AdamW state"] = 16 * size.trainable + 4 * size.frozen
    stage.memory["training workspace"] = TRAINING_WORKSPACE
    stage.knobs["training workspace"] = "train.batch_size"
    stage.knobs["model and AdamW state"] = "the towers' size or freeze"
    if teacher:
        stage.memory["saved cross-attention activations"] = SAVED_PER_LOGIT * b * b * words * size.image_tokens * 4
        stage.knobs["saved cross-attention activations"] = "teacher.train.batch_size"
    if not size.image_frozen:
        image = model_cfg.image_tower.image_size or 224
        stage.memory["image tower activations"] = b * 3 * image * image * 4 * 40
        stage.knobs["image tower activations"] = "train.batch_size or image_tower.freeze"
    if t.batching == "lexical":
        stage.memory["lexical batching tables"] = train.images * (BOW_DIM * 4 + t.group_size * 8) + NEIGHBOUR_BLOCK_BYTES
        stage.knobs["lexical batching tables"] = "train.batching: random"
    stage.memory["captions"] = (train.captions + val.captions) * CAPTION_BYTES
    stage.knobs["captions"] = "data.limit_train"
    dim = model_cfg.embed_dim
    val_tokens = (val.images * size.image_tokens + val.captions * words) * dim * 4 if teacher else 0
    stage.memory["validation"] = val.images * val.captions * 4 * 2 + val_tokens + (val.images + val.captions) * dim * 4
    stage.knobs["validation"] = "data.limit_val"
    steps = (train.images if t.sampling == "image" else train.captions) // b  # train.sampling: image visits each image once
    if t.image_cache == "uint8" and not size.image_frozen and model_cfg.image_tower.kind != "features":
        side = model_cfg.image_tower.image_size or 224
        stage.disk_bytes += train.images * side * side * 3  # the uint8 image cache (one per preprocessing: at most this)
    stage.teacher_pairs += (t.epochs * steps * b * b + t.epochs * val.images * val.captions) if teacher else 0
    kept = t.keep_checkpoints + 2
    stage.disk_bytes += runs * (kept * 12 * size.trainable + 4 * (size.trainable + size.frozen))


def _frozen_caches(size: ModelSize, model_cfg: TeacherConfig | StudentConfig, shapes: dict[str, SplitShape]) -> dict[str, int]:
    """Frozen-tower caches (float16) of the three splits, by the tower settings that key them: models
    with the same frozen tower (an ensemble's members) share one cache."""
    n_img = sum(s.images for s in shapes.values())
    n_cap = sum(s.captions for s in shapes.values())
    image = n_img * size.cached_image_tokens * size.cached_image_width * 2 if size.image_frozen and size.image_width and \
        model_cfg.image_tower.kind != "features" else 0
    text = n_cap * model_cfg.text_tower.max_length * size.text_width * 2 if size.text_frozen else 0
    return {json.dumps(stage_key(model_cfg.image_tower), sort_keys=True): image,
            json.dumps(stage_key(model_cfg.text_tower), sort_keys=True): text}


def _frozen_disk(size: ModelSize, model_cfg: TeacherConfig | StudentConfig, shapes: dict[str, SplitShape]) -> int:
    return sum(_frozen_caches(size, model_cfg, shapes).values())


def _token_store_bytes(split: SplitShape, size: ModelSize, teacher: TeacherConfig, token_item: int) -> int:
    """One teacher's token store of a split: projected tokens with their masks, and the global vectors."""
    d = teacher.embed_dim
    return (split.images * size.image_tokens + split.captions * teacher.text_tower.max_length) * (d * token_item + 1) + \
        (split.images + split.captions) * d * token_item


def _teacher_fit(stage: StagePlan, members: list[tuple[TeacherConfig, ModelSize]], shapes: dict[str, SplitShape]) -> None:
    """The teacher fit: each teacher trained in turn (the largest sets the peak), their frozen caches
    written once per tower; an ensemble then scores val with every member to choose its weights."""
    caches: dict[str, int] = {}
    for teacher, size in members:
        one = StagePlan(stage.name, [], [])
        _training(one, teacher, size, shapes["train"], shapes["val"], teacher=True)
        if one.peak_bytes > stage.peak_bytes:
            stage.memory, stage.knobs = one.memory, one.knobs
        stage.disk_bytes += one.disk_bytes
        stage.teacher_pairs += one.teacher_pairs
        caches.update(_frozen_caches(size, teacher, shapes))
    stage.disk_bytes += sum(caches.values())
    if len(members) > 1:
        stage.teacher_pairs += len(members) * shapes["val"].images * shapes["val"].captions


def stage_plan(cfg: Config, shapes: dict[str, SplitShape], name: str, student: ModelSize,
               members: list[tuple[TeacherConfig, ModelSize]]) -> StagePlan:
    """The plan of one stage (`data`, `teacher fit`, `teacher tokens SPLIT`, `teacher score SPLIT[-topk]`,
    `distill VARIANT`, `pack`, `export`, `eval`, `bench`). With a teacher ensemble, every member counts: each is
    fitted, encodes its token store and scores every pair the ensemble scores (`members`: each
    fitted teacher's config and size)."""
    train, val, test = shapes["train"], shapes["val"], shapes["test"]
    n_teachers = len(members)
    teachers_bytes = sum(4 * (size.trainable + size.frozen) for _, size in members)  # every member's weights, held together
    token_item = 2 if cfg.scores.token_dtype == "float16" else 4
    block = int(cfg.scores.block_gib * GIB)
    chunk = cfg.teacher.scan.max_chunk_elements * 4 * 8  # one block of word-region logits and what is derived from it
    kind, _, rest = name.partition(" ")
    if name == "data":
        s = StagePlan(name, [cfg.data.path or "generated scenes"], [_name(RUN.data_summary), _name(RUN.file_checks)])
        s.memory = {"captions": sum(x.captions for x in shapes.values()) * CAPTION_BYTES, "feature check block": 64 << 20}
    elif name == "teacher fit":
        s = StagePlan(name, ["train", "val"], [_name(RUN.teacher_ensemble if cfg.teacher.ensemble else RUN.teacher, "/")])
        _teacher_fit(s, members, shapes)
    elif kind == "teacher" and rest.startswith("tokens"):
        split = shapes[rest.split()[1]]
        s = StagePlan(name, [_name(RUN.teacher, "/"), rest.split()[1]], [_name(RUN.teacher_tokens(rest.split()[1]), "/")])
        s.disk_bytes = sum(_token_store_bytes(split, size, t, token_item) for t, size in members)
        s.memory = {"model": max(4 * (size.trainable + size.frozen) for _, size in members),  # one member at a time
                    "encoding batch": max(cfg.eval.batch_size * (
                        size.image_tokens * max(size.image_width, t.embed_dim) +
                        t.text_tower.max_length * max(size.text_width, t.embed_dim)) * 4 * 4 for t, size in members)}
    elif kind == "teacher" and rest.startswith("score"):
        which = rest.split()[1]
        split = shapes[which.removesuffix("-topk")]
        base = which.removesuffix("-topk")
        out = RUN.topk_scores(base) if which.endswith("-topk") else RUN.scores(base)
        s = StagePlan(name, [_name(RUN.teacher_tokens(base), "/")], [_name(out, "/")])
        s.memory = {"scoring block": block + chunk, "model": teachers_bytes}
        s.knobs = {"scoring block": "scores.block_gib"}
        if which.endswith("-topk"):
            k = cfg.scores.top_k
            s.teacher_pairs = n_teachers * (split.images + split.captions) * k
            s.disk_bytes = 2 * (split.images + split.captions) * k * 12
            s.memory["first-stage embeddings"] = (split.images + split.captions) * cfg.student.embedding_dim * 4 * 2
        else:
            s.teacher_pairs = n_teachers * split.images * split.captions
            s.disk_bytes = split.images * split.captions * 4
    elif kind == "distill":
        student_cfg = variant_config(cfg, rest)
        size = model_size(cfg, student_cfg)
        s = StagePlan(name, ["train", "val"], [_name(RUN.student(rest, "*"), "/")])
        seeds = len(cfg.experiment.seeds)
        _training(s, student_cfg, size, train, val, teacher=False, runs=seeds)
        b, e, m = student_cfg.train.batch_size, student_cfg.embedding_dim, student_cfg.momentum
        if student_cfg.losses.kd.weight > 0:
            source = kd_source(cfg, train.images, train.captions)
            s.reads.append(_name(RUN.teacher_tokens("train") if source == "online" else RUN.scores("train"), "/"))
            queued = m.queue_size if m.queue_size and "kd" in m.queue_terms else 0
            if source == "online":  # read from the cache otherwise: the cache's stage scored them
                steps = student_cfg.train.epochs * (train.captions // b) * (b * b + 2 * b * queued)
                calibration = CALIBRATION_BATCHES * min(b, train.images) ** 2 \
                    if student_cfg.losses.kd.teacher_temperature == "auto" else 0
                s.teacher_pairs = n_teachers * seeds * (steps + calibration)
                s.memory["online teacher"] = teachers_bytes + chunk + \
                    sum(b * (size.image_tokens + t.text_tower.max_length) * t.embed_dim * 4 * 2 for t, size in members)
        if m.queue_size or student_cfg.losses.cached_kd.weight > 0:
            s.memory["momentum encoder, queues, bank"] = 4 * size.trainable + 2 * m.queue_size * e * 4 + \
                2 * m.token_queue_size * student_cfg.embed_dim * 4 + \
                ((train.images + train.captions) * e * 4 if student_cfg.losses.cached_kd.weight > 0 else 0)
        s.disk_bytes += _frozen_disk(size, student_cfg, shapes) if rest == "baseline" else 0
        guided = student_cfg.losses.guided
        if guided.weight > 0:  # the guide's vectors, stored once for every seed (distill/guide.py)
            s.writes.append(_name(RUN.guide, "/"))
            if guided.source == "teacher":  # a towers guide's widths are known once it loads: left out
                s.disk_bytes += (train.images + train.captions) * cfg.teacher.embed_dim * 4
                s.reads.append(_name(RUN.teacher_tokens("train"), "/"))  # the teacher guide's source
    elif name == "pack":
        n = len(cfg.experiment.seeds)
        s = StagePlan(name, [_name(RUN.student("distilled", "*"), "/"), "val"], [_name(RUN.pack("distilled"), "/")])
        s.memory = {"members": 4 * n * (student.trainable + student.frozen), "members' selection scores": n * val.images * val.captions * 4}
    elif name == "export":
        size = student
        packed = len(cfg.experiment.seeds) if cfg.experiment.pack else 1  # a pack's members: a top and heads each
        source = RUN.pack("distilled") if cfg.experiment.pack else RUN.student("distilled", "*")
        s = StagePlan(name, [_name(source, "/"), cfg.eval.split], [_name(RUN.export, "/")])
        s.memory = {"student and ONNX sessions": 4 * (size.trainable * packed + size.frozen) * 6,
                    "gate images": cfg.export.gate_images * (size.image_tokens * size.image_width + 3 * 224 * 224) * 4}
        s.disk_bytes = 4 * (size.trainable + size.frozen) * 4
    elif name == "eval":
        matrix = test.images * test.captions
        s = StagePlan(name, [_name(RUN.teacher, "/"), _name(RUN.students, "/"), _name(RUN.export, "/"), cfg.eval.split],
                      [_name(RUN.eval_results)])
        # teacher and student (4 bytes each), re-ranking's i2t and t2i copies (8 each), the metrics' temporaries
        s.memory = {"score matrices": matrix * 32, "scoring block": block + chunk}
        s.knobs = {"score matrices": f"data.limit_{cfg.eval.split}", "scoring block": "scores.block_gib"}
        # the teacher scores each scored protocol's diagonal blocks (the whole matrix when folds 1 is listed:
        # re-ranking and the examples then read it), else also re-ranks each K within each fold of every
        # protocol and scores the examples' pairs
        blocks = sum(f * (test.images // f) * (test.captions // f) for f in scored_folds(cfg.eval.protocols))
        rerank = 0 if 1 in cfg.eval.protocols else (
            sum(test.images * min(k, test.captions // f) + test.captions * min(k, test.images // f)
                for f in cfg.eval.protocols for k in cfg.eval.rerank_k) + example_pairs(test.images, test.captions))
        s.teacher_pairs = n_teachers * (blocks + rerank)
        s.disk_bytes = sum(_token_store_bytes(test, size, t, token_item) for t, size in members)
    elif name == "bench":
        s = StagePlan(name, [_name(RUN.teacher, "/"), _name(RUN.export, "/"), cfg.eval.split], [_name(RUN.bench.parent, "/")])
        s.memory = {"teacher gallery tokens": int(cfg.bench.teacher_max_gib * GIB * 1.25),
                    "student gallery": max(cfg.bench.gallery_sizes) * cfg.student.embedding_dim * 4 * 2}
        s.knobs = {"teacher gallery tokens": "bench.teacher_max_gib", "student gallery": "bench.gallery_sizes"}
    else:
        raise ValueError(f"no plan for a stage named {name!r}")
    return s


def run_stages(cfg: Config, shapes: dict[str, SplitShape]) -> list[str]:
    """The stages `run` goes through, in order (as distill.pipeline chains them)."""
    names = ["data", "teacher fit"] + (["distill baseline"] if cfg.experiment.baseline else [])
    names += [n for n in [kd_teacher_stage(cfg, shapes)] if n]
    if cfg.scores.top_k > 0:
        names.append("teacher score train-topk")
    return names + ["distill distilled"] + (["pack"] if cfg.experiment.pack else []) + ["export", "eval", "bench"]


def _disk_limit(cfg: Config) -> tuple[int, str]:
    if cfg.limits.disk_gib is not None:
        return int(cfg.limits.disk_gib * GIB), "limits.disk_gib"
    where = Path(cfg.run_dir).resolve()
    while not where.exists():
        where = where.parent
    return shutil.disk_usage(where).free, f"free space on {where}"


def _memory_limit(cfg: Config) -> int:
    if cfg.limits.memory_gib is not None:
        return int(cfg.limits.memory_gib * GIB)
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal"))
    except (OSError, StopIteration):
        return 1 << 62  # unknown: no memory limit


def make_plan(cfg: Config, names: list[str] | None = None, shapes: dict[str, SplitShape] | None = None) -> Plan:
    """The plan of `names` (default: every stage of `run`), with what exceeds a limit; `shapes`
    replaces the data's own (e.g. to project a run to another dataset's size)."""
    shapes = shapes or split_shapes(cfg)
    student = model_size(cfg, cfg.student)
    members = [(c.teacher, model_size(cfg, c.teacher)) for c in fitted_teachers(cfg)]
    stages = [stage_plan(cfg, shapes, n, student, members) for n in (names or run_stages(cfg, shapes))]
    memory_limit, (disk_limit, disk_where) = _memory_limit(cfg), _disk_limit(cfg)
    problems = []
    train = shapes["train"]
    source = kd_source(cfg, train.images, train.captions)
    dense = train.images * train.captions * 4
    if any(s.name == "teacher score train" for s in stages) and dense > cfg.scores.max_dense_gib * GIB:
        problems.append(f"teacher score train: the all-pairs cache needs {_size(dense)} > scores.max_dense_gib "
                        f"({cfg.scores.max_dense_gib} GiB): set scores.kd_source: online (or auto) so that in-batch KD "
                        "scores its batches online, lower data.limit_train, or raise scores.max_dense_gib")
    for s in stages:
        if s.peak_bytes > memory_limit:
            part = max(s.memory, key=s.memory.get)
            problems.append(f"{s.name}: peak memory about {_size(s.peak_bytes)} > limits.memory_gib "
                            f"({_size(memory_limit)}); the largest part is {part} ({_size(s.memory[part])}): change "
                            f"{s.knobs.get(part, 'the settings that size it')}, or raise limits.memory_gib")
    total = sum(s.disk_bytes for s in stages)
    if total > disk_limit:
        biggest = max(stages, key=lambda s: s.disk_bytes)
        problems.append(f"the run writes about {_size(total)} > {disk_where} ({_size(disk_limit)}); the largest "
                        f"writer is {biggest.name} ({_size(biggest.disk_bytes)}): free space, point run_dir elsewhere, "
                        "or raise limits.disk_gib")
    uses_kd = uses_teacher(variant_config(cfg, "distilled").losses)
    return Plan(stages, memory_limit, disk_limit, disk_where, source if uses_kd else None, problems)


def require(cfg: Config, name: str) -> None:
    """Refuse, before the stage `name` does any work, when its plan exceeds a limit."""
    plan = make_plan(cfg, [name])
    if plan.problems:
        raise PlanError(f"{name}: refused before any work: " + "; ".join(plan.problems))
