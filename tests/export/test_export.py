import json
import warnings

import numpy as np
import pytest
import torch

from core.config import ExportConfig, VariantGate
from core.data.loading import image_loader
from eval.metrics import retrieval_metrics
from export import onnx_export
from export.gate import ExportParityError, check_variant, pytorch_reference
from export.runtime import OnnxStudent
from export.variants import VARIANTS
from tests.export.conftest import export, gate_data


def test_manifest_files_and_gates(exported):
    _, out, manifest = exported
    names = {p.name for p in out.iterdir()}
    assert {"manifest.json", "README.md", "tokenizer", "sentence_transformer"} <= names
    assert manifest["embedding_dim"] == 32 and manifest["image"]["input"] == "pixel_values"
    assert manifest["image"]["preprocess"]["size"] == 32 and manifest["text"]["max_length"] == 24
    assert list(manifest["variants"]) == ["fp32", "optimized", "fp16", "int8"]
    for variant in manifest["variants"].values():
        assert set(variant["files"].values()) <= names
        gate = variant["gate"]
        assert gate["passed"] and gate["retrieval"]["images"] == 16 and gate["retrieval"]["captions"] == 80
        assert gate["min_cosine"]["text"] >= gate["threshold"]["min_cosine"]
        assert len(gate["text_lengths"]) >= 3  # one word, padded batches, truncated at max_length
        assert variant["latency_cpu"]["caption_encoding_batch1"]["n"] == 2
    fp32 = manifest["variants"]["fp32"]["gate"]
    assert fp32["retrieval"]["onnx"] == fp32["retrieval"]["pytorch"] and manifest["parity"] == fp32
    assert json.loads((out / "manifest.json").read_text())["variants"] == manifest["variants"]
    assert len(manifest["source_checkpoint"]["sha256"]) == 64 and manifest["measured_on"]["cpu_count"] >= 1


def test_model_card_states_each_variants_gate(exported):
    _, out, manifest = exported
    card = (out / "README.md").read_text()
    for name in manifest["variants"]:
        assert f"| {name} |" in card
    assert card.count("passed") == len(manifest["variants"]) and "FAILED" not in card
    assert "SentenceTransformer(" in card and "itr-distill search" in card


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("texts", [["a"], ["a red circle"] * 3, ["tiny", "a big red circle left of a small blue square"],
                                   ["word " * 60]])
def test_runtime_matches_pytorch_on_dynamic_shapes(exported, variant, texts):
    student, out, manifest = exported
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fp16 is built for GPUs
        runtime = OnnxStudent(out, variant)
    tokens = student.tokenize(texts)
    np.testing.assert_array_equal(runtime.tokenize(texts)["input_ids"], tokens["input_ids"].numpy())
    with torch.no_grad():
        ref = student.encode_text(tokens["input_ids"], tokens["attention_mask"]).numpy()
    got = runtime.encode_text(texts)
    assert got.shape == ref.shape
    assert (got * ref).sum(-1).min() >= manifest["variants"][variant]["gate"]["threshold"]["min_cosine"]
    if variant in ("fp32", "optimized"):
        np.testing.assert_allclose(got, ref, atol=1e-5)


def test_captions_run_in_length_order_and_come_back_in_theirs(exported, splits):
    """Batches of similar length, each padded to its own longest: the same embedding for a caption
    whatever the others beside it, returned in the order given."""
    student, out, _ = exported
    runtime = OnnxStudent(out)
    texts = ["a", "word " * 60, "a red circle", "tiny", "a big red circle left of a small blue square"] + \
        list(splits["test"].captions[:7])
    alone = np.concatenate([runtime.encode_text([t]) for t in texts])
    np.testing.assert_allclose(runtime.encode_text(texts, batch_size=3), alone, atol=1e-5)
    np.testing.assert_allclose(runtime.encode_text(texts[::-1], batch_size=4), alone[::-1], atol=1e-5)
    assert runtime.encode_text([]).shape == (0, runtime.embedding_dim)


def test_captions_are_tokenised_a_block_of_batches_at_a_time(exported, splits, monkeypatch):
    """However many captions come in, `encode_text` holds the token ids of one block of batches at a time."""
    import export.runtime.session as session

    _, out, _ = exported
    runtime, texts = OnnxStudent(out), list(splits["test"].captions[:11])
    whole = runtime.encode_text(texts, batch_size=2)
    monkeypatch.setattr(session, "SORT_BLOCK_BATCHES", 2)
    sizes = []
    tokenize = runtime.tokenize
    runtime.tokenize = lambda chunk: sizes.append(len(chunk)) or tokenize(chunk)
    np.testing.assert_allclose(runtime.encode_text(texts, batch_size=2), whole, atol=1e-5)
    assert sizes == [4, 4, 3]


def test_a_splits_captions_reach_the_runtime_in_blocks_of_several_batches(exported, splits):
    """eval's caption encoding hands `encode_text` blocks of batches, so that it has captions to sort by length."""
    from eval.evaluate import onnx_captions

    _, out, _ = exported
    runtime, split = OnnxStudent(out), splits["test"]
    calls = []
    encode = runtime.encode_text
    runtime.encode_text = lambda texts, batch_size: calls.append(len(texts)) or encode(texts, batch_size)
    got = onnx_captions(runtime, split, batch_size=2, batches_per_block=3)
    assert calls[0] == 6 and sum(calls) == split.n_captions
    np.testing.assert_allclose(got, encode(list(split.captions)), atol=1e-5)


@pytest.mark.parametrize("n", [1, 5])
def test_runtime_images_match_pytorch(exported, splits, n):
    student, out, _ = exported
    runtime = OnnxStudent(out)
    batch = next(iter(image_loader(splits["test"].head(n), student.image_tower.preprocess(), n)))
    with torch.no_grad():
        ref = student.encode_images(batch.images).numpy()
    np.testing.assert_allclose(runtime.encode_image_files(list(splits["test"].image_paths[:n])), ref, atol=1e-5)


@pytest.mark.parametrize("mode", [{"io_binding": True}, {"static_batch": 4}])
def test_bound_and_fixed_shape_runs_equal_plain_runs(exported, splits, mode):
    """The GPU paths (I/O binding; fixed buffers for CUDA graphs) run on the CPU too: same embeddings, any batch size."""
    _, out, _ = exported
    plain, bound = OnnxStudent(out), OnnxStudent(out, **mode)
    texts = list(splits["test"].captions[:9])  # 9 = two full fixed batches of 4 and one padded
    np.testing.assert_allclose(bound.encode_text(texts, batch_size=5), plain.encode_text(texts), atol=1e-5)
    np.testing.assert_allclose(bound.encode_text(texts[:1]), plain.encode_text(texts[:1]), atol=1e-5)
    paths = list(splits["test"].image_paths[:6])
    np.testing.assert_allclose(bound.encode_image_files(paths), plain.encode_image_files(paths), atol=1e-5)


def test_sentence_transformers_loads_the_text_encoder(exported, splits):
    from sentence_transformers import SentenceTransformer

    _, out, _ = exported
    texts = list(splits["test"].captions[:6]) + ["word " * 60]
    st = SentenceTransformer(str(out / "sentence_transformer"), device="cpu")
    np.testing.assert_allclose(st.encode(texts, convert_to_numpy=True), OnnxStudent(out).encode_text(texts), atol=1e-5)


def test_gate_fails_for_a_different_model(exported, splits, tiny_student):
    _, out, _ = exported
    data = gate_data(tiny_student, splits["test"])
    with torch.no_grad():
        for p in tiny_student.text_proj.parameters():
            p.add_(torch.randn_like(p))
    report = check_variant(OnnxStudent(out), pytorch_reference(tiny_student, data, [1, 3]), data, VariantGate(),
                           retrieval_metrics)
    assert not report["passed"] and report["min_cosine"]["text"] < 0.9 and report["min_cosine"]["image"] > 0.9999


def test_failed_gate_writes_nothing_and_keeps_the_old_export(tmp_path, tiny_student, splits, monkeypatch):
    data = gate_data(tiny_student, splits["test"])
    out = tmp_path / "export"
    export(tiny_student, out, ExportConfig(variants=["fp32"], latency_repeats=1), data)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    def int8_fails(runtime, *args):
        # Whether int8 reaches a cosine of 1.0 on a tiny model depends on the CPU's kernels, so the
        # verdict is forced here: this test is about what a failed gate leaves on disk.
        report = check_variant(runtime, *args)
        return {**report, "passed": report["passed"] and runtime.variant != "int8"}

    monkeypatch.setattr(onnx_export, "check_variant", int8_fails)
    with pytest.raises(ExportParityError, match=r"\['int8'\].*nothing was written"):
        export(tiny_student, out, ExportConfig(variants=["fp32", "int8"], latency_repeats=1), data)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "export.safetensors"]


def test_unknown_variant_is_named(exported):
    _, out, _ = exported
    with pytest.raises(ValueError, match=r"manifest.json: no variant 'int4'.*fp16"):
        OnnxStudent(out, "int4")


def test_a_variant_used_off_its_providers_warns(exported):
    _, out, _ = exported
    with pytest.warns(UserWarning, match=r"'fp16' is built for \['CUDAExecutionProvider'"):
        OnnxStudent(out, "fp16")
