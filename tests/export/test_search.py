"""`itr-distill search` on an exported tiny student, and the runtime's independence from torch."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from distill.cli import main
from export.runtime import OnnxStudent, ProviderError, make_session


@pytest.fixture(scope="module")
def gallery(tmp_path_factory, splits):
    root = tmp_path_factory.mktemp("gallery")
    for path in splits["test"].image_paths[:6]:
        shutil.copy(path, root / f"{len(list(root.iterdir())):02d}_{path.name}")
    (root.parent / "captions.txt").write_text("\n".join(splits["test"].captions[:10]) + "\n")
    return root, root.parent / "captions.txt"


def _search(capsys, *args) -> list[dict]:
    assert main(["search", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_text_query_ranks_images_like_the_runtime(exported, gallery, capsys):
    _, out, _ = exported
    images, _ = gallery
    query = "a big red circle left of a small blue square"
    (result,) = _search(capsys, out, "--gallery", images, "--query", query, "-k", "4")
    runtime = OnnxStudent(out)
    files = sorted(str(p) for p in images.iterdir())
    scores = runtime.encode_image_files(files) @ runtime.encode_text([query])[0]
    assert [h["id"] for h in result["hits"]] == [files[i] for i in np.argsort(-scores, kind="stable")[:4]]
    assert [h["rank"] for h in result["hits"]] == [1, 2, 3, 4] and result["kind"] == "text"


def test_saved_index_gives_the_same_answers(exported, gallery, capsys, tmp_path):
    _, out, _ = exported
    _, captions = gallery
    image = sorted(gallery[0].iterdir())[0]
    first = _search(capsys, out, "--gallery", captions, "--image", image, "--save-index", tmp_path / "idx")
    again = _search(capsys, out, "--index", tmp_path / "idx", "--image", image)
    assert first == again and len(first[0]["hits"]) == 5 and first[0]["kind"] == "image"


def test_index_of_another_export_is_refused(exported, gallery, capsys, tmp_path):
    _, out, manifest = exported
    images, _ = gallery
    assert main(["search", str(out), "--gallery", str(images), "--save-index", str(tmp_path / "idx")]) == 0
    other = tmp_path / "other"
    shutil.copytree(out, other)
    changed = {**manifest, "source_checkpoint": {**manifest["source_checkpoint"], "sha256": "0" * 64}}
    (other / "manifest.json").write_text(json.dumps(changed))
    assert main(["search", str(other), "--index", str(tmp_path / "idx"), "--query", "a red circle"]) == 1
    assert "built by another model" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--gallery", "CAPTIONS", "--query", "a red circle"], "--query searches images, but the gallery holds captions"),
    (["--gallery", "IMAGES", "--image", "IMAGE"], "--image searches captions, but the gallery holds images"),
    (["--gallery", "MISSING", "--query", "x"], "MISSING: no such gallery directory or caption file"),
    (["--gallery", "IMAGES"], "nothing to do"),
    (["--gallery", "IMAGES", "--query", "x", "--variant", "int4"], "no variant 'int4'"),
])
def test_bad_requests_get_clear_errors(exported, gallery, capsys, tmp_path, args, message):
    _, out, _ = exported
    images, captions = gallery
    paths = {"CAPTIONS": captions, "IMAGES": images, "IMAGE": sorted(images.iterdir())[0], "MISSING": tmp_path / "MISSING"}
    assert main(["search", str(out), *[str(paths.get(a, a)) for a in args]]) == 1
    assert message in capsys.readouterr().err


def test_provider_check(exported):
    _, out, _ = exported
    with pytest.raises(ProviderError, match="not available"):
        make_session(out / "text_encoder.onnx", ["NoSuchExecutionProvider"])
    with pytest.raises(ProviderError, match="unknown device 'npu'"):
        make_session(out / "text_encoder.onnx", "npu")
    if "CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers():
        with pytest.raises(ProviderError, match="CUDAExecutionProvider is not available"):
            OnnxStudent(out, providers="cuda")
    with pytest.raises(ProviderError, match="cuda_graph needs the CUDAExecutionProvider"):
        OnnxStudent(out, cuda_graph=True, static_batch=1)
    assert make_session(out / "text_encoder.onnx").get_providers()[0] == "CPUExecutionProvider"


BLOCK_TORCH = """
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'torch', 'transformers', 'sentence_transformers', 'timm'}:
            raise ImportError(f'{name} is blocked: the runtime must not need it')
sys.meta_path.insert(0, Blocker())
from distill.cli import main
code = main(sys.argv[1:])
assert not any(m.split('.')[0] in {'torch', 'transformers'} for m in sys.modules), 'torch was imported'
sys.exit(code)
"""


def test_search_runs_with_torch_unimportable(exported, gallery):
    _, out, _ = exported
    images, _ = gallery
    done = subprocess.run([sys.executable, "-c", BLOCK_TORCH, "search", str(out), "--gallery", str(images),
                           "--query", "a red circle", "--variant", "int8", "-k", "2"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("text query: a red circle") and len(done.stdout.strip().splitlines()) == 3
