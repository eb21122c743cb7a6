import pytest
import torch
import torch.nn.functional as F

from core.config import GuidedLossConfig, ImageTowerConfig, TextTowerConfig
from core.data.loading import pair_loader
from core.run_layout import ModelDir, RunPaths
from distill import guide as guide_module
from distill.guide import guide_targets
from distill.terms import GuidedTerm, StepContext, _relational
from student.enhance import masked_mean
from teacher.scoring import encode_split
from teacher.tokens import build_token_store, open_token_store, token_identity
from tests.conftest import TINY_TOWERS, build_tiny


def _towers_guide(text_model_dir, max_length: int = 24) -> GuidedLossConfig:
    return GuidedLossConfig(weight=1.0, source="towers", image_tower=ImageTowerConfig(**TINY_TOWERS["image_tower"]),
                            text_tower=TextTowerConfig(model=str(text_model_dir), max_length=max_length))


@pytest.fixture()
def guide(tmp_path, text_model_dir, splits):
    return guide_targets(_towers_guide(text_model_dir), RunPaths(tmp_path / "run"), splits["train"], 32,
                         torch.device("cpu"))


def test_guide_vectors_cover_the_split_and_are_unit_norm(guide, splits):
    train = splits["train"]
    assert guide.images.shape[0] == train.n_images and guide.captions.shape[0] == train.n_captions
    torch.testing.assert_close(guide.images.norm(dim=1), torch.ones(train.n_images))
    assert not guide.images.requires_grad and not guide.captions.requires_grad


def test_guide_vectors_are_stored_once_per_guide_and_split_and_read_back_by_later_students(
        tmp_path, text_model_dir, splits, monkeypatch):
    paths, cpu = RunPaths(tmp_path / "run"), torch.device("cpu")
    first = guide_targets(_towers_guide(text_model_dir), paths, splits["train"], 32, cpu)
    computed = []
    real = guide_module._compute
    monkeypatch.setattr(guide_module, "_compute", lambda *a: computed.append(a[2].name) or real(*a))
    again = guide_targets(_towers_guide(text_model_dir), paths, splits["train"], 32, cpu)
    assert computed == [] and torch.equal(again.images, first.images) and torch.equal(again.captions, first.captions)
    guide_targets(_towers_guide(text_model_dir), paths, splits["val"], 32, cpu)  # another split
    guide_targets(_towers_guide(text_model_dir, max_length=8), paths, splits["train"], 32, cpu)  # another guide
    assert computed == ["val", "train"] and len(list(paths.guide.iterdir())) == 3


@pytest.mark.parametrize("global_weight", [1.0, 0.0])
@pytest.mark.parametrize("dtype, atol", [("float32", 1e-6), ("float16", 2e-3)])
def test_the_teacher_guide_reads_the_teachers_global_vectors_from_its_token_store(
        tmp_path, text_model_dir, splits, global_weight, dtype, atol):
    """The teacher's global vectors (its global head's, else its mean projected token), unit norm, from
    the store KD's caches are made from: no second pass of the teacher over the split."""
    teacher, split, cpu = build_tiny("teacher", text_model_dir, global_weight=global_weight), splits["train"], torch.device("cpu")
    identity = token_identity("t" * 64, split.fingerprint(), split.name, split.n_images, split.n_captions, dtype)
    build_token_store(teacher, split, tmp_path / "store", identity, teacher.image_tower.preprocess(), 7, cpu,
                      progress=False)
    paths = RunPaths(tmp_path / "run")
    ModelDir(paths.teacher).weights.parent.mkdir(parents=True)
    ModelDir(paths.teacher).weights.write_bytes(b"the fitted teacher")  # the guide's key names its checkpoint
    guide = guide_targets(GuidedLossConfig(weight=1.0), paths, split, 32, cpu, open_token_store(tmp_path / "store", identity))
    with torch.no_grad():
        encoded = encode_split(teacher, split, teacher.image_tower.preprocess(), 5, cpu, False)
    for got, side in zip((guide.images, guide.captions), encoded, strict=True):
        vectors = side.pooled if global_weight else masked_mean(side.tokens, side.mask)
        torch.testing.assert_close(got, F.normalize(vectors, dim=-1), atol=atol, rtol=0)
    with pytest.raises(ValueError, match="token store"):
        guide_targets(GuidedLossConfig(weight=1.0), paths, splits["val"], 32, cpu)  # not stored yet, and no store


def test_guided_enhancement_targets_stay_frozen_while_the_student_learns(guide, text_model_dir, splits):
    student = build_tiny("student", text_model_dir).train()
    before = (guide.images.clone(), guide.captions.clone())
    term, ctx = GuidedTerm(1.0, 0.05, 20.0), StepContext(guide=guide)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    loader = pair_loader(splits["train"], student.image_tower.preprocess(), student.tokenize, 8, batching="random",
                         generator=torch.Generator().manual_seed(0))
    losses = []
    for _, batch in zip(range(3), loader, strict=False):
        loss = term(student(batch), batch, ctx)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert torch.equal(guide.images, before[0]) and torch.equal(guide.captions, before[1])
    assert guide.images.grad is None and all(torch.isfinite(torch.tensor(losses)))
    assert student.image_proj.weight.grad is not None and student.image_proj.weight.grad.abs().sum() > 0


def test_relational_loss_is_least_when_the_student_ranks_like_the_guide():
    torch.manual_seed(0)
    guide = F.normalize(torch.randn(6, 5), dim=-1)
    excluded = torch.eye(6, dtype=torch.bool)
    matching = _relational(guide.clone(), guide, excluded, temperature=0.05, scale=20.0)
    other = _relational(F.normalize(torch.randn(6, 5), dim=-1), guide, excluded, temperature=0.05, scale=20.0)
    p = torch.softmax((guide @ guide.T / 0.05).masked_fill(excluded, float("-inf")), dim=1)
    entropy = -(p * p.clamp_min(1e-30).log()).sum(1).mean()
    torch.testing.assert_close(matching, entropy)
    assert float(other) > float(matching)
    every_row_excluded = torch.ones(6, 6, dtype=torch.bool)  # a batch of one image: nothing to rank
    assert float(_relational(guide, guide, every_row_excluded, 0.05, 20.0)) == 0.0
