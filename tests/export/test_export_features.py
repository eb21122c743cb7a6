"""Export of a student whose image side is precomputed region features (SCAN/VSE format)."""
import numpy as np
import torch

from core.config import ExportConfig, GateConfig
from core.data.loading import image_loader
from core.data.precomputed import read_precomputed
from core.schema import build
from export.runtime import OnnxStudent
from tests.conftest import TINY_GATES, build_tiny
from tests.export.conftest import export, gate_data


def test_region_feature_student_exports_and_runs(tmp_path, text_model_dir):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "test_ims.npy", rng.normal(size=(6, 5, 16)).astype(np.float32))
    (tmp_path / "test_caps.txt").write_text("".join(f"a red circle number {i}\n" for i in range(30)))
    split = read_precomputed(tmp_path, ["test"], "test")
    student = build_tiny("student", text_model_dir, 16, image_tower={"kind": "features"}, image_pooling="tower")
    batch = next(iter(image_loader(split, None, 6)))
    # 6 random images: one flipped i2t query is 16.7 points of R@1, so here only the cosine part of the int8 gate binds
    gates = {**TINY_GATES, "int8": {**TINY_GATES["int8"], "max_r1_drop": 100.0}}
    cfg = ExportConfig(variants=["fp32", "int8"], latency_repeats=1, gate=build(GateConfig, gates))
    manifest = export(student, tmp_path / "export", cfg, gate_data(student, split))
    assert manifest["image"] == {"input": "regions", "regions": 5, "feature_dim": 16}
    assert all(v["gate"]["passed"] for v in manifest["variants"].values())
    runtime = OnnxStudent(tmp_path / "export")
    with torch.no_grad():
        ref = student.encode_images(batch.images, batch.image_mask).numpy()
    np.testing.assert_allclose(runtime.encode_regions(np.asarray(split.features)), ref, atol=1e-5)
    mask = np.ones((6, 5), dtype=bool)
    mask[:, 3:] = False  # padded regions take no part
    moved = np.asarray(split.features).copy()
    moved[:, 3:] = 100.0
    np.testing.assert_allclose(runtime.encode_regions(moved, mask=mask), runtime.encode_regions(np.asarray(split.features), mask=mask), atol=1e-6)

    fixed = OnnxStudent(tmp_path / "export", static_batch=4)
    np.testing.assert_allclose(fixed.encode_regions(moved, mask=mask), runtime.encode_regions(moved, mask=mask), atol=1e-5)
