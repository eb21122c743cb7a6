import pytest
import torch
import torch.nn.functional as F

from core.data.loading import pair_loader
from core.towers.image import TokenOutput
from student.encode import encode_split
from tests.conftest import build_tiny


def test_embeddings_are_normalised_and_independent_of_the_batch(tiny_student, splits):
    split = splits["val"]
    images, captions = encode_split(tiny_student, split, tiny_student.image_tower.preprocess(), 7, torch.device("cpu"), False)
    assert images.shape == (16, 32) and captions.shape == (80, 32)
    assert abs(float((images ** 2).sum(1).mean()) - 1) < 1e-5
    tokens = tiny_student.tokenize([split.captions[3]])  # alone: no padding
    with torch.no_grad():
        alone = tiny_student.encode_text(tokens["input_ids"], tokens["attention_mask"])
    torch.testing.assert_close(alone[0], torch.from_numpy(captions[3]), atol=1e-5, rtol=1e-5)


def test_forward_returns_global_and_local_views(tiny_student, splits):
    loader = pair_loader(splits["train"], tiny_student.image_tower.preprocess(), tiny_student.tokenize, 4,
                         batching="random", generator=torch.Generator().manual_seed(0))
    batch = next(iter(loader))
    out = tiny_student(batch)
    torch.testing.assert_close(out["sims"], out["img_emb"] @ out["txt_emb"].T)
    with torch.no_grad():
        torch.testing.assert_close(out["img_emb"], tiny_student.encode_images(batch.images))
    assert out["img_local"].shape == (4, 4, 32) and out["txt_local"].shape[:2] == batch.input_ids.shape
    assert out["txt_local_mask"].tolist() == batch.attention_mask.bool().tolist()


def test_local_tokens_are_projected_only_for_selfalign(text_model_dir, splits):
    """A student whose losses read no local tokens (the contrastive baseline) skips projecting them; the
    embeddings do not change."""
    without = build_tiny("student", text_model_dir, losses={"align": {"weight": 0.0}, "concept": {"weight": 0.0}})
    with_local = build_tiny("student", text_model_dir, losses={"align": {"weight": 0.0}, "concept": {"weight": 0.1}})
    batch = next(iter(pair_loader(splits["train"], without.image_tower.preprocess(), without.tokenize, 4,
                                  batching="random", generator=torch.Generator().manual_seed(0))))
    plain, full = without(batch), with_local(batch)
    assert "img_local" not in plain and "txt_local" not in plain and "img_local" in full and "txt_local" in full
    torch.testing.assert_close(plain["sims"], full["sims"])
    assert plain["txt_local_mask"].tolist() == full["txt_local_mask"].tolist()


def test_selfalign_reads_a_random_draw_of_valid_image_tokens_in_training_only(text_model_dir, splits):
    """`local_image_tokens`: each image's local tokens are that many of its own projected tokens, valid
    ones first, drawn anew each step; evaluation and the embeddings see every token."""
    student = build_tiny("student", text_model_dir, image_pooling="gpo", local_image_tokens=2,
                         losses={"align": {"weight": 0.1}}).train()
    batch = next(iter(pair_loader(splits["train"], student.image_tower.preprocess(), student.tokenize, 4,
                                  batching="random", generator=torch.Generator().manual_seed(0))))
    img = student.tower_outputs(batch)[0]
    every = F.normalize(student.image_proj(img.tokens), dim=-1)  # (4, 4, 32): the tiny grid has 4 tokens
    torch.manual_seed(0)
    first, second = student(batch), student(batch)
    assert first["img_local"].shape == (4, 2, 32) and first["img_local_mask"].all()
    for drawn in (first, second):
        for image in range(4):
            match = torch.cdist(drawn["img_local"][image], every[image]).argmin(dim=1)
            torch.testing.assert_close(drawn["img_local"][image], every[image][match])
            assert len(set(match.tolist())) == 2  # two different tokens of the image's own
    assert not torch.equal(first["img_local"], second["img_local"])
    torch.testing.assert_close(first["img_emb"], second["img_emb"])  # the embeddings pool every token
    assert student.eval()(batch)["img_local"].shape == (4, 4, 32)
    padded = TokenOutput(torch.randn(2, 4, 32), torch.tensor([[True] * 4, [False, True, False, False]]), torch.zeros(2, 32))
    drawn = student.train()._local_image_sample(padded)
    assert drawn.mask.tolist()[0] == [True, True] and sorted(drawn.mask.tolist()[1]) == [False, True]
    assert any(torch.equal(t, padded.tokens[1, 1]) for t in drawn.tokens[1])  # the one valid token is drawn


def test_flatten_pooling_keeps_positions(text_model_dir):
    built = {p: build_tiny("student", text_model_dir, image_pooling=p) for p in ("flatten", "tower")}
    tokens = torch.randn(1, 4, 32)
    swapped = tokens[:, [1, 0, 2, 3]]  # the same local features at other grid positions
    def out(t):
        return TokenOutput(t, torch.ones(1, 4, dtype=torch.bool), t.mean(1))
    with torch.no_grad():
        flat = built["flatten"]
        assert flat.image_proj.in_features == 4 * 32
        assert not torch.allclose(flat.images_from(out(tokens)), flat.images_from(out(swapped)))
        avg = built["tower"]
        torch.testing.assert_close(avg.images_from(out(tokens)), avg.images_from(out(swapped)))


def test_flatten_pooling_refuses_region_features(text_model_dir):
    with pytest.raises(ValueError, match="grid image tower"):
        build_tiny("student", text_model_dir, 16, image_tower={"kind": "features"}, image_pooling="flatten")


@pytest.mark.parametrize("pooling", ["flatten", "tower"])
def test_weights_round_trip(text_model_dir, tmp_path, pooling):
    from core.checkpoint import load_weights, save_weights

    model = build_tiny("student", text_model_dir, image_pooling=pooling)
    save_weights(model, tmp_path / "m.safetensors")
    other = build_tiny("student", text_model_dir, image_pooling=pooling)
    with torch.no_grad():
        for p in other.parameters():
            p.zero_()
    load_weights(other, tmp_path / "m.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True))
