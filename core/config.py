"""The run configuration: one YAML file per run, validated before any work starts.

The dataclass defaults *are* the embedded default (`itr-distill demo`); `configs/demo.yaml` spells
the same values out and a test keeps the two equal. Command-line overrides use dotted keys
(`--set teacher.train.epochs=3`); values are parsed as YAML.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from core.data.split_names import parse_split_name
from core.io import write_text
from core.schema import KEY_UNLESS_SET, NOT_IN_KEY, ConfigError, build, to_dict

__all__ = ["Config", "ConfigError", "load_config", "save_config", "apply_overrides"]


def _positive(obj: Any, *names: str) -> list[str]:
    return [f"{n}: must be > 0, got {getattr(obj, n)}" for n in names if not getattr(obj, n) > 0]


def _non_negative(obj: Any, *names: str) -> list[str]:
    return [f"{n}: must be >= 0, got {getattr(obj, n)}" for n in names if not getattr(obj, n) >= 0]


def _top_needs_freeze(tower: Any) -> list[str]:
    if tower.train_top and not tower.freeze:
        return [f"train_top: {tower.train_top} needs freeze: true (a tower that trains whole has no frozen trunk)"]
    return []


@dataclass
class SyntheticConfig:
    """Size and seed of the generated scene dataset (the embedded default)."""

    n_train: int = 1400
    n_val: int = 200
    n_test: int = 200
    image_size: int = 64
    family_size: int = 4
    min_objects: int = 2
    max_objects: int = 3
    seed: int = 0

    def problems(self) -> list[str]:
        out = _positive(self, "n_train", "n_val", "n_test", "family_size")
        if self.image_size < 32:
            out.append(f"image_size: must be >= 32, got {self.image_size}")
        if not 2 <= self.min_objects <= self.max_objects <= 4:
            out.append("min_objects/max_objects: need 2 <= min_objects <= max_objects <= 4")
        return out


@dataclass
class SplitsConfig:
    """Which split names of the source make up each of our three splits."""

    train: list[str] = field(default_factory=lambda: ["train", "restval"])
    val: list[str] = field(default_factory=lambda: ["val"])
    test: list[str] = field(default_factory=lambda: ["test"])

    def problems(self) -> list[str]:
        out = []
        for which in ("train", "val", "test"):
            for name in getattr(self, which):
                try:
                    parse_split_name(name)
                except ValueError as exc:
                    out.append(f"{which}: {exc}")
        return out


@dataclass
class DataConfig:
    """Where the image-caption pairs come from."""

    format: Literal["synthetic", "karpathy", "precomputed"] = "synthetic"
    # karpathy: the split JSON; precomputed: the directory of {split}_ims.npy / {split}_caps.txt;
    # synthetic: where the generated dataset is written (default: <run_dir>/data).
    path: str | None = None
    image_root: str | None = None
    captions_per_image: int = 5
    splits: SplitsConfig = field(default_factory=SplitsConfig)
    # Keep only the first N images of a split (None: all; only those are checked). For quick runs.
    limit_train: int | None = None
    limit_val: int | None = None
    limit_test: int | None = None
    # Bad entries (missing, unreadable or oversized images, too few captions, ...): false stops before
    # training with one error listing them; true (the CLI's --skip-bad) leaves them out, counts them in
    # the log and lists them in <run_dir>/bad_data.json.
    skip_bad: bool = False
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def problems(self) -> list[str]:
        out = _positive(self, "captions_per_image")
        if self.format in ("karpathy", "precomputed") and not self.path:
            out.append(f"path: required when format is '{self.format}'")
        if self.format == "karpathy" and not self.image_root:
            out.append("image_root: required when format is 'karpathy'")
        sliced = [n for w in ("train", "val", "test") for n in getattr(self.splits, w) if "[" in str(n)]
        if sliced and self.format != "karpathy":
            out.append(f"splits: sliced split names ({sliced[0]}) need format 'karpathy'")
        for name in ("limit_train", "limit_val", "limit_test"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                out.append(f"{name}: must be > 0 or null, got {value}")
        return out


@dataclass
class BackboneConfig:
    """A further timm backbone beside an image tower's own (`image_tower.also`)."""

    name: str
    pretrained: bool = False  # timm hub weights (needs network)
    weights: str | None = None  # local weights file (.safetensors / .pth / .pt)
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def problems(self) -> list[str]:
        return ["pretrained/weights: choose one of timm hub weights or a local weights file"] \
            if self.pretrained and self.weights else []


@dataclass
class ImageTowerConfig:
    """A timm backbone (any model name) or a pass-through for precomputed region features."""

    kind: Literal["timm", "features"] = "timm"
    name: str = "resnet10t"
    pretrained: bool = False  # timm hub weights (needs network)
    weights: str | None = None  # local weights file (.safetensors / .pth / .pt)
    # Passed to timm.create_model. The default narrows resnet10t and keeps a 4x4 grid at 64 px.
    model_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"channels": [32, 64, 128, 256], "stem_width": 16, "output_stride": 16})
    image_size: int | None = 64  # None: the model's own input size
    freeze: bool = False
    # With freeze: the last N stages of the backbone (timm EfficientNet/MobileNet `blocks`, ResNet
    # `layer1..4`) still train; the frozen trunk below them runs once per split and is cached.
    train_top: int = 0
    # With train_top: the trunk's tokens at the cut (a finer grid when a stride-2 stage lies above it)
    # follow the final tokens, mapped to the tower's width by a trained linear layer: more, smaller regions.
    fine_tokens: bool = field(default=False, metadata=KEY_UNLESS_SET)
    # Further convolutional backbones run on the same pixels: each grid resampled to this backbone's and
    # its channels appended to every token (and pooled vector). Backbones pretrained apart see an image
    # differently; a dual encoder reads them all without any cross-modal interaction.
    also: list[BackboneConfig] = field(default_factory=list, metadata=KEY_UNLESS_SET)
    lr_scale: float = 1.0

    def problems(self) -> list[str]:
        out = _non_negative(self, "lr_scale", "train_top") + _top_needs_freeze(self)
        if self.also and (self.kind != "timm" or self.train_top):
            out.append("also: further backbones need kind: timm and train_top: 0 (a whole tower, frozen or trained)")
        if self.pretrained and self.weights:
            out.append("pretrained/weights: choose one of timm hub weights or a local weights file")
        if self.fine_tokens and not self.train_top:
            out.append("fine_tokens: needs train_top >= 1 (the finer grid is the trunk's output at the cut)")
        return out


@dataclass
class ScratchTextConfig:
    """A small BERT trained from scratch, with a WordPiece vocabulary built from the captions: every
    character, then their most frequent words up to `vocab_size` tokens (core.towers.scratch_text)."""

    vocab_size: int = 400
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 256

    def problems(self) -> list[str]:
        out = _positive(self, "vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size")
        if self.num_heads > 0 and self.hidden_size % self.num_heads:
            out.append(f"hidden_size: must be divisible by num_heads ({self.num_heads})")
        return out


@dataclass
class TextTowerConfig:
    """A sentence-transformers model (hub name or local directory), or 'scratch'."""

    model: str = "scratch"
    max_length: int = 32
    freeze: bool = False
    # With freeze: the last N transformer layers still train; the frozen layers below run once per
    # split and are cached.
    train_top: int = 0
    lr_scale: float = 1.0
    scratch: ScratchTextConfig = field(default_factory=ScratchTextConfig)

    def problems(self) -> list[str]:
        return _positive(self, "max_length") + _non_negative(self, "lr_scale", "train_top") + _top_needs_freeze(self)


@dataclass
class TrainConfig:
    """Optimisation settings shared by the teacher fit and student distillation."""

    epochs: int = 4
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    grad_clip: float = 2.0
    eval_every: int = 1  # epochs between validation passes (0: never)
    select: Literal["last", "best_val"] = "best_val"
    keep_checkpoints: int = 1  # epoch checkpoints kept besides the selected one
    batching: Literal["random", "lexical"] = "lexical"  # lexical: hard-negative groups in each batch
    group_size: int = 4  # images per lexical group
    bf16: bool = True  # bf16 autocast of forward and loss on CUDA (CPU training stays float32)
    # What an epoch visits: `caption` every caption once (its image decoded once per caption), `image`
    # every image once with one of its captions drawn at random (a fifth of the steps with five captions)
    sampling: Literal["caption", "image"] = field(default="caption", metadata=KEY_UNLESS_SET)
    # Decode JPEGs at a reduced scale no smaller than the resize (faster for photos at least twice the
    # resize; the pixels then differ slightly from evaluation's full decode, hence off by default)
    jpeg_draft: bool = field(default=False, metadata=KEY_UNLESS_SET)
    # The input pipeline: none of these changes what a batch holds, so they stay out of stage keys.
    num_workers: int | None = field(default=None, metadata=NOT_IN_KEY)  # DataLoader workers; null: see `workers`
    prefetch_factor: int = field(default=2, metadata=NOT_IN_KEY)  # batches each worker prepares ahead
    # uint8: decode, resize and crop the train split's images once into run_dir/images/ (memory-mapped)
    image_cache: Literal["none", "uint8"] = field(default="none", metadata=NOT_IN_KEY)

    def workers(self) -> int:
        """DataLoader workers: `num_workers`, or by default one per core of this process's share of the
        machine (torchrun's LOCAL_WORLD_SIZE processes share it) but one, at most 8."""
        if self.num_workers is not None:
            return self.num_workers
        share = (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        return max(0, min(8, share - 1))

    def problems(self) -> list[str]:
        out = _positive(self, "epochs", "batch_size", "lr", "prefetch_factor")
        out += _non_negative(self, "weight_decay", "warmup_steps", "grad_clip", "eval_every", "keep_checkpoints")
        if self.num_workers is not None and self.num_workers < 0:
            out.append(f"num_workers: must be >= 0 or null, got {self.num_workers}")
        if self.group_size < 1:
            out.append(f"group_size: must be >= 1, got {self.group_size}")
        if self.batch_size == 1:
            out.append("batch_size: in-batch losses need at least 2 pairs per batch")
        if self.select == "best_val" and self.eval_every == 0:
            out.append("select: 'best_val' needs eval_every > 0")
        return out


@dataclass
class ScanConfig:
    """SCAN stacked cross attention (Lee et al., ECCV 2018); `ensemble` averages t2i and i2t."""

    direction: Literal["t2i", "i2t", "ensemble"] = "t2i"
    aggregation: Literal["lse", "mean"] = "lse"
    lambda_softmax: float = 9.0  # t2i (words attend over regions)
    lambda_lse: float = 6.0
    i2t_lambda_softmax: float = 4.0  # i2t (regions attend over words): direction i2t, the ensemble, IMRAM image side
    i2t_lambda_lse: float = 5.0
    max_chunk_elements: int = 1 << 20  # word-region logits per block: bounds memory; ~1M fits the CPU cache

    def problems(self) -> list[str]:
        return _positive(self, "lambda_softmax", "lambda_lse", "i2t_lambda_softmax", "i2t_lambda_lse",
                         "max_chunk_elements")


@dataclass
class ImramConfig:
    """IMRAM iterative matching (Chen et al., CVPR 2020): `steps` alignment steps, the query refined
    between steps by a gated memory unit; text side (words query regions), image side or both."""

    steps: int = 3
    side: Literal["text", "image", "full"] = "full"

    def problems(self) -> list[str]:
        return _positive(self, "steps")


@dataclass
class CrossConfig:
    """The joint transformer of `teacher.matching: cross` (the interactive teacher of ALADIN / OSCAR-style
    models): the [CLS] token of a few pre-norm layers over an image's and a caption's tokens feeds a
    matching head. Trained on lists of the positive and the `negatives` hardest in-batch candidates by
    the teacher's own global score, which is also its first stage wherever every pair costs too much."""

    layers: int = 2
    heads: int = 4
    ff_dim: int = 512
    dropout: float = 0.1
    negatives: int = 3  # hard negatives per image and per caption in each training batch
    eval_top_k: int = 50  # evaluation re-ranks each query's top-K by the global score; 0: scores every pair

    def problems(self) -> list[str]:
        return _positive(self, "layers", "heads", "ff_dim", "negatives") + _non_negative(self, "dropout", "eval_top_k")


@dataclass
class TeacherConfig:
    """The interactive matcher: towers, token projections, SCAN / IMRAM / a cross-encoder, and its objective."""

    image_tower: ImageTowerConfig = field(default_factory=ImageTowerConfig)
    text_tower: TextTowerConfig = field(default_factory=TextTowerConfig)
    embed_dim: int = 256
    projection: Literal["linear", "mlp"] = "linear"  # token projection into the joint space
    matching: Literal["scan", "imram", "cross"] = "scan"  # the fine-grained score
    scan: ScanConfig = field(default_factory=ScanConfig)
    imram: ImramConfig = field(default_factory=ImramConfig)
    cross: CrossConfig = field(default_factory=CrossConfig, metadata=KEY_UNLESS_SET)
    global_weight: float = 1.0  # adds global_weight * cos(pooled image, pooled caption) to the score
    margin: float = 0.2
    max_violation: bool = True  # VSE++ hardest negative; False: sum over negatives
    sum_violation_epochs: int = 4  # warm up with the sum of violations for this many epochs
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=7))
    # The name of an experiment.teacher_ensembles entry the run distils from, evaluates and re-ranks
    # with instead of this teacher alone ("": this teacher). This teacher is fitted either way.
    ensemble: str = field(default="", metadata=NOT_IN_KEY)

    def problems(self) -> list[str]:
        out = _positive(self, "embed_dim") + _non_negative(self, "global_weight", "margin", "sum_violation_epochs")
        if self.matching == "cross" and not self.global_weight > 0:
            out.append("matching: 'cross' needs global_weight > 0 (the global score mines its hard negatives "
                       "and is its first stage)")
        if self.matching == "cross" and self.embed_dim % self.cross.heads:
            out.append(f"cross.heads: {self.cross.heads} must divide embed_dim {self.embed_dim}")
        return out


@dataclass
class ScoresConfig:
    """Teacher score caches of the training split: all pairs (in-batch KD) and the top-K candidates
    of every caption and every image from a first-stage dual encoder."""

    top_k: int = 0  # candidates per query (student.losses.cached_kd reads them); 0: no top-K cache
    generator: str = "baseline"  # baseline | distilled (the first seed's student) | a student or export directory
    shard_queries: int = 1024  # queries (or items encoded into the token store) per part: the unit of sharding over torchrun ranks
    bf16: bool = True  # bf16 autocast when the teacher scores on a GPU (CPU scoring stays float32)
    max_dense_gib: float = 8.0  # refuse all-pairs caches larger than this
    # Where in-batch KD gets the teacher's scores of the batch's pairs: `cache` (the all-pairs cache of
    # the train split), `online` (the frozen teacher scores the gathered batch in the loop, from its
    # token store), `auto` (the cache when it fits max_dense_gib, online otherwise).
    kd_source: Literal["auto", "cache", "online"] = "auto"
    # The token store: the teacher's projected tokens of a split, computed once, memory-mapped; every
    # scorer (online KD, all-pairs and top-K caches, evaluation) reads it in blocks of block_gib.
    token_dtype: Literal["float16", "float32"] = "float16"
    block_gib: float = 0.5  # teacher tokens (as float32) held at once by a scoring block

    def problems(self) -> list[str]:
        return _non_negative(self, "top_k") + _positive(self, "shard_queries", "max_dense_gib", "block_gib")


@dataclass
class ContrastiveLossConfig:
    """Symmetric InfoNCE with a learnable temperature, or the VSE++ hinge."""

    weight: float = 1.0
    kind: Literal["infonce", "hinge"] = "infonce"
    init_temperature: float = 0.07
    learn_temperature: bool = True
    margin: float = 0.2
    max_violation: bool = True

    def problems(self) -> list[str]:
        return _non_negative(self, "weight", "margin") + _positive(self, "init_temperature")


@dataclass
class KDLossConfig:
    """In-batch ListNet distillation from the teacher's scores (ALADIN), both directions."""

    weight: float = 1.0
    # SCAN scores of one batch often differ by only a few hundredths, and their spread changes
    # from teacher to teacher: a fixed temperature is either flat or one-hot. 'auto' measures the
    # teacher's in-batch score spread on the score cache and sets the temperature so that the
    # teacher's logits have a standard deviation of `teacher_logit_std` (logged and recorded).
    teacher_temperature: float | Literal["auto"] = "auto"
    teacher_logit_std: float = 6.0
    student_scale: float = 20.0

    def problems(self) -> list[str]:
        out = _non_negative(self, "weight") + _positive(self, "teacher_logit_std", "student_scale")
        if self.teacher_temperature != "auto" and not self.teacher_temperature > 0:
            out.append(f"teacher_temperature: must be > 0 or 'auto', got {self.teacher_temperature}")
        return out


@dataclass
class AlignLossConfig:
    """SelfAlign context-level alignment: global vector vs the other modality's local tokens."""

    weight: float = 0.1
    temperature: float = 0.1

    def problems(self) -> list[str]:
        return _non_negative(self, "weight") + _positive(self, "temperature")


@dataclass
class CachedKDLossConfig:
    """Listwise distillation over each batch query's cached top-K teacher-scored candidates (the
    caption's images and the image's captions); candidates are embedded by the momentum encoder."""

    weight: float = 0.0  # off in the embedded default: it did not help there (see the README's ablation)
    candidates: int = 32  # the first N of each cached list (at most the cache's K)
    # 'auto': calibrated like kd.teacher_temperature, on the spread within the cached lists
    teacher_temperature: float | Literal["auto"] = "auto"
    teacher_logit_std: float = 4.0
    student_scale: float = 20.0

    def problems(self) -> list[str]:
        out = _non_negative(self, "weight") + _positive(self, "candidates", "teacher_logit_std", "student_scale")
        if self.teacher_temperature != "auto" and not self.teacher_temperature > 0:
            out.append(f"teacher_temperature: must be > 0 or 'auto', got {self.teacher_temperature}")
        return out


@dataclass
class ConceptLossConfig:
    """SelfAlign concept-level alignment: Sinkhorn-Knopp assignments of one modality's tokens to
    learnable prototypes are the targets that the other modality's best-matching tokens predict."""

    weight: float = 0.0  # off in the embedded default: it did not help there (see the README's ablation)
    prototypes: int = 64
    temperature: float = 0.1  # of the predicted assignment's softmax
    epsilon: float = 0.05  # Sinkhorn-Knopp entropy regularisation (smaller: sharper targets)
    sinkhorn_iterations: int = 3
    directions: Literal["both", "t2i", "i2t"] = "both"  # t2i: words predict image-token codes

    def problems(self) -> list[str]:
        return _non_negative(self, "weight") + _positive(self, "prototypes", "temperature", "epsilon",
                                                         "sinkhorn_iterations")


@dataclass
class LexicalLossConfig:
    """Hierarchical embedding's local term: ListNet of the local space's in-batch scores towards the
    lexical labels (IDF-weighted share of a caption's words found in an image's other captions).
    Trained only when `student.hierarchy.local_dim` > 0."""

    weight: float = 1.0
    label_temperature: float = 0.1  # labels lie in [0, 1]; 0.1 spreads them over 10 logits
    student_scale: float = 20.0

    def problems(self) -> list[str]:
        return _non_negative(self, "weight") + _positive(self, "label_temperature", "student_scale")


@dataclass
class GuidedLossConfig:
    """USER's guided enhancement: a frozen off-the-shelf encoder pair gives global targets. Its
    in-batch image-image and caption-caption similarities (which need no cross-modal alignment, so
    any timm / sentence-transformers pair serves) are the ListNet targets of the student's."""

    weight: float = 0.0  # off in the embedded default: see the README's ablation
    source: Literal["teacher", "towers"] = "teacher"  # the teacher's global vectors, or the towers below
    image_tower: ImageTowerConfig = field(default_factory=lambda: ImageTowerConfig(freeze=True))
    text_tower: TextTowerConfig = field(default_factory=lambda: TextTowerConfig(freeze=True))
    temperature: float = 0.05  # of the guide's cosines
    student_scale: float = 20.0

    def problems(self) -> list[str]:
        out = _non_negative(self, "weight") + _positive(self, "temperature", "student_scale")
        if self.source == "towers" and self.weight > 0:
            if self.text_tower.model == "scratch":
                out.append("text_tower.model: a guide needs a trained sentence-transformers model, not 'scratch'")
            tower = self.image_tower
            if tower.kind == "timm" and not (tower.pretrained or tower.weights):
                out.append("image_tower: a guide needs trained weights (pretrained: true, or weights: FILE)")
        return out


@dataclass
class LossesConfig:
    """The student's named, weighted loss terms."""

    contrastive: ContrastiveLossConfig = field(default_factory=ContrastiveLossConfig)
    kd: KDLossConfig = field(default_factory=KDLossConfig)
    cached_kd: CachedKDLossConfig = field(default_factory=CachedKDLossConfig)
    align: AlignLossConfig = field(default_factory=AlignLossConfig)
    concept: ConceptLossConfig = field(default_factory=ConceptLossConfig)
    lexical: LexicalLossConfig = field(default_factory=LexicalLossConfig)
    guided: GuidedLossConfig = field(default_factory=GuidedLossConfig)


QUEUE_TERMS = ("contrastive", "kd", "align")  # the terms that can read beyond the batch


@dataclass
class MomentumConfig:
    """A momentum (EMA) copy of the student whose embeddings fill FIFO queues of past batches, which
    the contrastive, in-batch KD and context-alignment terms use beyond the batch (MoCo / USER)."""

    coefficient: float = 0.995  # 0: the queues take the student's own (detached) outputs, no second forward
    queue_size: int = 0  # past captions and images per queue (0: no queues; off in the embedded default)
    token_queue_size: int = 4096  # past local tokens per modality (kept when `align` reads the queues)
    queue_terms: list[str] = field(default_factory=lambda: list(QUEUE_TERMS))  # the loss terms that read the queues

    def problems(self) -> list[str]:
        out = _non_negative(self, "queue_size", "token_queue_size")
        if not 0 <= self.coefficient < 1:
            out.append(f"coefficient: must be in [0, 1), got {self.coefficient}")
        unknown = [t for t in self.queue_terms if t not in QUEUE_TERMS]
        if unknown or not self.queue_terms:
            out.append(f"queue_terms: must be a non-empty list of {list(QUEUE_TERMS)}, got {self.queue_terms}")
        return out


@dataclass
class MemoryBankConfig:
    """MEMBER's cross-modal memory banks: `slots` online cluster centres of the training set's image
    embeddings (read by captions) and of its caption embeddings (read by images), moved towards each
    batch's nearest embeddings at every step (EMA, `momentum`). Each embedding adds `mix` times the
    bank vectors it attends to and is renormalised; the banks are constants of the exported graphs.
    At `level: token` the banks hold centres of the towers' token features instead (image tokens, read
    by words; words, read by image tokens), and every valid token adds what it reads (`mix` times its
    own norm) before pooling (student.enhance.TokenMemory)."""

    slots: int = 0  # centres per bank (0: off)
    # global: embeddings read banks of embeddings; token: tokens read banks of tokens, before pooling
    level: Literal["global", "token"] = "global"
    mix: float = 0.5
    temperature: float = 0.05  # of the attention over the slots
    momentum: float = 0.99  # of the centres' moving average, per step

    def problems(self) -> list[str]:
        out = _non_negative(self, "slots", "mix") + _positive(self, "temperature")
        return out + ([] if 0 <= self.momentum < 1 else [f"momentum: must be in [0, 1), got {self.momentum}"])


@dataclass
class HierarchyConfig:
    """Hierarchical embedding (Sun, Qin, Liu 2023): a local space learned beside the global one
    (supervised by `losses.lexical`); the shipped embedding concatenates the two normalised vectors,
    weighted, and is unit-norm, so a dot product scores global_weight² x global + local_weight² x local."""

    local_dim: int = 0  # 0: off
    global_weight: float = 1.0
    local_weight: float = 0.5

    def problems(self) -> list[str]:
        out = _non_negative(self, "local_dim", "global_weight", "local_weight")
        return out + ([] if self.global_weight + self.local_weight > 0 else ["global_weight, local_weight: not both 0"])


@dataclass
class SelfGuidedConfig:
    """USER's self-guided enhancement: a global query (the mean of a modality's tokens) attends over
    its tokens, and the attention re-weights the tokens before pooling (both modalities)."""

    attention_dim: int = 0  # query/key width (0: off)

    def problems(self) -> list[str]:
        return _non_negative(self, "attention_dim")


@dataclass
class StudentConfig:
    """The dual encoder that ships: towers, pooling, projection, L2-normalised embeddings."""

    image_tower: ImageTowerConfig = field(default_factory=lambda: ImageTowerConfig(
        model_kwargs={"channels": [16, 32, 64, 128], "stem_width": 16, "output_stride": 16}))
    text_tower: TextTowerConfig = field(default_factory=lambda: TextTowerConfig(
        scratch=ScratchTextConfig(hidden_size=64, intermediate_size=128)))
    embed_dim: int = 128
    projection: Literal["linear", "mlp"] = "linear"
    # tower: the image tower's own pooled vector; flatten: grid tokens concatenated in order
    # (keeps positions, which average pooling loses; needs a fixed-size grid tower); gpo: VSE∞'s
    # learned pooling of sorted token values (student.pooling)
    image_pooling: Literal["tower", "flatten", "gpo"] = "flatten"
    text_pooling: Literal["tower", "gpo"] = "tower"  # tower: the sentence-transformers model's own pooling
    train: TrainConfig = field(default_factory=TrainConfig)
    losses: LossesConfig = field(default_factory=LossesConfig)
    momentum: MomentumConfig = field(default_factory=MomentumConfig)
    memory_bank: MemoryBankConfig = field(default_factory=MemoryBankConfig)
    hierarchy: HierarchyConfig = field(default_factory=HierarchyConfig)
    self_guided: SelfGuidedConfig = field(default_factory=SelfGuidedConfig)
    # SelfAlign's local terms (align, concept) read this many of each image's valid tokens per training
    # step, drawn at random (0: all of them). Projecting every token is most of a distilled step over
    # frozen grid towers; the tokens that GPO pools and the shipped encoders are untouched.
    local_image_tokens: int = field(default=0, metadata=KEY_UNLESS_SET)

    def problems(self) -> list[str]:
        return _positive(self, "embed_dim") + _non_negative(self, "local_image_tokens")

    @property
    def embedding_dim(self) -> int:
        """The shipped embedding's width: the global space, plus the local one when hierarchical."""
        return self.embed_dim + self.hierarchy.local_dim


# Components of the student beyond the contrastive term, and which each student variant keeps:
# `distilled` is the configured student, `baseline` the contrastive term alone, the others one
# component (or a named combination) on top of it: the rows of `itr-distill ablate`. Loss components
# are on when their weight is > 0; the others when the setting named here is > 0.
STUDENT_COMPONENTS = ("kd", "cached_kd", "align", "concept", "queue", "memory_bank", "memory_token", "hierarchy",
                      "self_guided", "guided")
SIZE_SWITCHES = {"queue": ("momentum", "queue_size"), "memory_bank": ("memory_bank", "slots"),
                 "memory_token": ("memory_bank", "slots"), "hierarchy": ("hierarchy", "local_dim"),
                 "self_guided": ("self_guided", "attention_dim")}
# MEMBER's two components share `memory_bank.slots`; each is on only at its `memory_bank.level`, and a
# variant that keeps one of them runs MEMBER at that level whatever level the config names
MEMORY_LEVELS = {"memory_bank": "global", "memory_token": "token"}
USER = ("self_guided", "guided", "queue")  # USER: both enhancements and the queued negatives
STUDENT_VARIANTS: dict[str, tuple[str, ...]] = {
    "baseline": (), "kd": ("kd",), "cached-kd": ("cached_kd",), "selfalign": ("align", "concept"),
    "queue": ("queue",), "member": ("memory_bank",), "hierarchical": ("hierarchy",), "user-self": ("self_guided",),
    "user-guided": ("guided",), "user": USER, "kd+member": ("kd", "memory_bank"), "member-token": ("memory_token",),
    "kd+member-token": ("kd", "memory_token"), "kd+hierarchical": ("kd", "hierarchy"), "kd+user": ("kd", *USER),
    "distilled": STUDENT_COMPONENTS}


@dataclass
class ExperimentConfig:
    """Which students `run` trains: the configured one, and a no-distillation baseline, per seed."""

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    baseline: bool = True
    # `itr-distill ablate-teachers`: named teachers, each the configured one with these dotted
    # overrides of `teacher.*` settings (e.g. {top: [teacher.image_tower.train_top=1]}).
    teacher_variants: dict[str, list[str]] = field(default_factory=dict)
    # Rows that combine fitted teachers (`configured` or teacher_variants names): the sum of their
    # standardised scores, weights chosen on the selection split (e.g. {pair: [configured, lite2]}).
    teacher_ensembles: dict[str, list[str]] = field(default_factory=dict)
    # `run` packs the distilled students of every seed into one dual encoder (student/packed.py; weights
    # chosen on the selection split) and exports the pack instead of the first seed's student
    pack: bool = False

    def problems(self) -> list[str]:
        out = []
        if not self.seeds:
            out.append("seeds: need at least one seed")
        elif len(set(self.seeds)) != len(self.seeds):
            out.append("seeds: must be distinct")
        elif self.pack and len(self.seeds) < 2:
            out.append(f"pack: packing needs two or more seeds, got {self.seeds}")
        for name, overrides in self.teacher_variants.items():
            if name == "configured" or not name.replace("-", "").replace("_", "").isalnum():
                out.append(f"teacher_variants: {name!r} is not a usable name (letters, digits, - and _; not 'configured')")
            bad = [o for o in overrides if not (isinstance(o, str) and o.startswith("teacher.") and "=" in o)]
            if bad:
                out.append(f"teacher_variants.{name}: {bad[0]!r} is not a teacher.KEY=VALUE override")
        teachers = ["configured", *self.teacher_variants]
        for name, members in self.teacher_ensembles.items():
            if name in teachers:
                out.append(f"teacher_ensembles: {name!r} is already a teacher's name")
            unknown = [m for m in members if m not in teachers]
            if unknown or len(set(members)) < 2 or len(set(members)) != len(members):
                out.append(f"teacher_ensembles.{name}: needs two or more distinct teachers of {teachers}, got {members}")
        return out


@dataclass
class VariantGate:
    """What one exported variant must reproduce of the PyTorch student."""

    min_cosine: float = 0.9999  # every embedding's cosine to PyTorch, on every gate input
    max_r1_drop: float = 0.0  # points of i2t or t2i R@1 it may lose on the held-out gate set

    def problems(self) -> list[str]:
        out = [] if 0 < self.min_cosine <= 1 else [f"min_cosine: must be in (0, 1], got {self.min_cosine}"]
        return out + _non_negative(self, "max_r1_drop")


@dataclass
class GateConfig:
    """Per-variant gates: exact variants must match; reduced precision may lose a stated amount."""

    fp32: VariantGate = field(default_factory=VariantGate)
    optimized: VariantGate = field(default_factory=VariantGate)
    fp16: VariantGate = field(default_factory=lambda: VariantGate(min_cosine=0.999, max_r1_drop=1.0))
    int8: VariantGate = field(default_factory=lambda: VariantGate(min_cosine=0.98, max_r1_drop=2.0))


EXPORT_VARIANTS = ("fp32", "optimized", "fp16", "int8")


@dataclass
class ExportConfig:
    """ONNX export of the student's two towers, its variants, and the gates that guard them."""

    exporter: Literal["dynamo", "torchscript"] = "dynamo"
    opset: int = 18
    variants: list[Literal["fp32", "optimized", "fp16", "int8"]] = field(default_factory=lambda: list(EXPORT_VARIANTS))
    gate: GateConfig = field(default_factory=GateConfig)
    gate_images: int = 100  # held-out images (with their captions) for the retrieval part of the gate
    parity_batch_sizes: list[int] = field(default_factory=lambda: [1, 2, 7])
    latency_repeats: int = 20  # batch-1 timings per variant for the model card

    def problems(self) -> list[str]:
        out = _positive(self, "gate_images", "latency_repeats")
        if not 14 <= self.opset <= 23:
            out.append(f"opset: must be between 14 and 23, got {self.opset}")
        if not self.parity_batch_sizes or any(b <= 0 for b in self.parity_batch_sizes):
            out.append("parity_batch_sizes: need positive batch sizes")
        if "fp32" not in self.variants:
            out.append("variants: must include fp32 (the other variants are made from it)")
        if len(set(self.variants)) != len(self.variants):
            out.append(f"variants: listed twice in {self.variants}")
        return out


@dataclass
class EvalConfig:
    """Retrieval evaluation protocol."""

    split: Literal["val", "test"] = "test"
    # 5: COCO 1K protocol; a list evaluates several protocols at once ([1, 5]: COCO 5K and 1K), the first in the main table
    folds: int | list[int] = 1
    batch_size: int = 128
    rerank_k: list[int] = field(default_factory=lambda: [10, 50, 100])  # student top-K re-ranked by the teacher
    rerank_student_weight: float = 1.0  # re-ranking score = teacher + this x student cosine (0: teacher alone)

    @property
    def protocols(self) -> list[int]:
        """`folds` as a list: every protocol one evaluation scores, the first the one its main table shows."""
        return list(self.folds) if isinstance(self.folds, list) else [self.folds]

    def problems(self) -> list[str]:
        out = _positive(self, "batch_size") + _non_negative(self, "rerank_student_weight")
        if not isinstance(self.folds, list):
            out += _positive(self, "folds")
        elif not self.folds or any(f < 1 for f in self.folds):
            out.append(f"folds: need one or more values >= 1, got {self.folds}")
        elif len(set(self.folds)) != len(self.folds):
            out.append(f"folds: listed twice in {self.folds}")
        if any(k <= 0 for k in self.rerank_k):
            out.append(f"rerank_k: need positive values, got {self.rerank_k}")
        return out


# torch.compile is left out by default: on a 2-core CPU it spends about 25 s compiling the demo's encoder.
BENCH_BACKENDS = ("pytorch-fp32", "pytorch-bf16-autocast", "pytorch-fp16-autocast",
                  "onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt")


@dataclass
class BenchConfig:
    """Latency benchmarks: per-query retrieval on the split, the encoder matrix, and gallery-size scaling."""

    warmup: int = 5
    repeats: int = 50
    queries: int = 30
    threads: int | None = None  # torch / onnxruntime intra-op threads (None: library default)
    cuda: bool = True  # also measure on CUDA when it is present
    matrix: bool = True  # caption-encoder matrix: backend x batch size x caption length
    matrix_backends: list[Literal["pytorch-fp32", "pytorch-bf16-autocast", "pytorch-fp16-autocast", "pytorch-compile",
                                  "onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt"]] = field(
        default_factory=lambda: list(BENCH_BACKENDS))
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 64, 256])
    caption_lengths: list[int] = field(default_factory=lambda: [8, 16, 32])  # tokens, capped at the model's maximum
    matrix_budget_s: float = 0.25  # timed seconds per shape at most (fewer repetitions for slow shapes, at least 3)
    scaling: bool = True  # per-query latency against gallery size
    gallery_sizes: list[int] = field(default_factory=lambda: [1_000, 5_000, 25_000, 100_000, 1_000_000])
    scaling_budget_s: float = 0.5  # timed seconds per gallery size at most (at least 3 queries)
    teacher_max_gib: float = 2.0  # teacher token features held in memory at most; larger galleries are extrapolated
    scaling_max_query_s: float = 2.0  # stop measuring the teacher once one query takes longer; extrapolate the rest
    usable_ms: float = 100.0  # the per-query latency at which the report calls a gallery size no longer usable
    image_batch: int = 32  # gallery indexing: images per encoder call (timed beside one image, an image query)
    image_budget_s: float = 2.0  # timed seconds per image-encoding row at most (at least 3 calls)

    def problems(self) -> list[str]:
        out = _non_negative(self, "warmup") + _positive(self, "repeats", "queries", "matrix_budget_s", "scaling_budget_s",
                                                         "image_batch", "image_budget_s",
                                                         "teacher_max_gib", "scaling_max_query_s", "usable_ms")
        for name in ("batch_sizes", "caption_lengths", "gallery_sizes"):
            values = getattr(self, name)
            if not values or any(v <= 0 for v in values):
                out.append(f"{name}: need positive values, got {values}")
        return out


@dataclass
class LimitsConfig:
    """What a run may use; the plan (`itr-distill plan`) refuses a run, before any stage works, whose
    estimated peak memory of a stage or disk writes exceed them. null: this machine's physical memory
    (MemTotal) and the free space of the run directory's filesystem."""

    memory_gib: float | None = None
    disk_gib: float | None = None

    def problems(self) -> list[str]:
        return [f"{n}: must be > 0 or null, got {getattr(self, n)}" for n in ("memory_gib", "disk_gib")
                if getattr(self, n) is not None and not getattr(self, n) > 0]


@dataclass
class Config:
    """A whole run: data, teacher, student, experiment, export, evaluation, benchmark and limits."""

    run_dir: str = "runs/demo"
    seed: int = 0
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    scores: ScoresConfig = field(default_factory=ScoresConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)

    def problems(self) -> list[str]:
        out = []
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            out.append(f"device: expected 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}")
        if self.teacher.ensemble and self.teacher.ensemble not in self.experiment.teacher_ensembles:
            out.append(f"teacher.ensemble: {self.teacher.ensemble!r} is not an experiment.teacher_ensembles entry "
                       f"(have {sorted(self.experiment.teacher_ensembles) or 'none'})")
        cached = self.student.losses.cached_kd
        if cached.weight > 0 and not cached.candidates <= self.scores.top_k:
            out.append(f"student.losses.cached_kd: needs scores.top_k >= its candidates ({cached.candidates}), "
                       f"got top_k {self.scores.top_k} (set cached_kd.weight: 0 to train without a top-K cache)")
        return out


def _unshared(node: Any) -> Any:
    """A copy of parsed YAML in which no two paths share a mapping or a list (`copy.deepcopy` keeps
    aliases aliased)."""
    if isinstance(node, dict):
        return {k: _unshared(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_unshared(v) for v in node]
    return node


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `raw` with dotted `key=value` overrides applied (values parsed as YAML). YAML
    anchors make two paths share one mapping (`student.image_tower: *image_tower`); the copy shares
    nothing, so an override changes the path it names only."""
    out = _unshared(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError([f"override {item!r}: expected key=value"], "command line")
        key, text = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = yaml.safe_load(text)
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read, override and validate a config; `path=None` starts from the embedded default."""
    raw: dict[str, Any] = {}
    source = "embedded default"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError([f"file not found: {path}"], source)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError([f"not valid YAML: {exc}"], source) from exc
        if not isinstance(raw, dict):
            raise ConfigError([f"top level must be a mapping, got {type(raw).__name__}"], source)
    raw = apply_overrides(raw, overrides or [])
    return build(Config, raw, source)


def config_to_yaml(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config (every value, defaults included) as YAML."""
    write_text(path, config_to_yaml(config))
