"""`itr-distill serve` on a tiny export: the JSON API against `itr-distill search`, bad requests, a bounded
load, and the page itself in a headless browser."""
from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
import torch

from distill.cli import main, parser
from export.runtime.load_test import main as load_test_main
from export.runtime.serve import Searcher, background_server, create_app, load_searcher
from tests.export.browser import chromium_missing, headless_chromium, save_screenshot, search_image, search_text
from tests.export.conftest import export, gate_data

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

QUERY = "a big red circle left of a small blue square"
MAX_UPLOAD_MB = 0.05


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, text_model_dir, splits) -> Path:
    """One tiny export (fp32 and its variants), made once for this module."""
    from core.config import ExportConfig, GateConfig
    from core.schema import build
    from tests.conftest import TINY_GATES, build_tiny

    student = build_tiny("student", text_model_dir)
    out = tmp_path_factory.mktemp("serve") / "export"
    cfg = ExportConfig(exporter="torchscript", latency_repeats=2, gate=build(GateConfig, TINY_GATES))
    with torch.no_grad():
        export(student, out, cfg, gate_data(student, splits["test"]))
    return out


@pytest.fixture(scope="module")
def gallery(tmp_path_factory, splits) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("serve_gallery")
    (root / "images").mkdir()
    for i, path in enumerate(splits["test"].image_paths[:8]):
        shutil.copy(path, root / "images" / f"{i:02d}_{path.name}")
    (root / "captions.txt").write_text("\n".join(splits["test"].captions[:12]) + "\n")
    return root / "images", root / "captions.txt"


def _args(*argv):
    return parser().parse_args(["serve", *map(str, argv)])


@pytest.fixture(scope="module")
def searcher(export_dir, gallery) -> Searcher:
    images, captions = gallery
    return load_searcher(_args(export_dir, "--gallery", images, "--captions", captions))


@pytest.fixture(scope="module")
def url(searcher):
    with background_server(create_app(searcher, MAX_UPLOAD_MB)) as base:
        yield base


def _call(base: str, path: str, data: bytes | None = None, headers: dict | None = None,
          method: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(base + path, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        with err:
            return err.code, json.loads(err.read())


def _multipart(field: str, filename: str, data: bytes) -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def _search_cli(capsys, *args) -> list[dict]:
    assert main(["search", *map(str, args), "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    return result["hits"]


def test_text_query_answers_like_the_search_command(url, export_dir, gallery, capsys):
    images, _ = gallery
    status, got = _call(url, f"/api/search?q={urllib.parse.quote(QUERY)}&k=4")
    assert status == 200 and got["query"] == QUERY and got["k"] == 4 and got["latency_ms"] > 0
    expected = _search_cli(capsys, export_dir, "--gallery", images, "--query", QUERY, "-k", "4")
    assert [(h["rank"], h["id"]) for h in got["hits"]] == [(h["rank"], h["id"]) for h in expected]
    assert [h["score"] for h in got["hits"]] == pytest.approx([h["score"] for h in expected], abs=1e-6)
    status, posted = _call(url, "/api/search", json.dumps({"query": QUERY, "k": 4}).encode(),
                           {"Content-Type": "application/json"})
    assert status == 200 and [h["id"] for h in posted["hits"]] == [h["id"] for h in got["hits"]]
    with urllib.request.urlopen(url + got["hits"][0]["url"], timeout=30) as response:  # the thumbnail
        assert response.headers["Content-Type"] == "image/png" and response.read()[:4] == b"\x89PNG"


def test_image_upload_answers_like_the_search_command(url, export_dir, gallery, capsys):
    images, captions = gallery
    image = sorted(images.iterdir())[2]
    status, got = _call(url, "/api/search/image?k=3", *_multipart("image", image.name, image.read_bytes()))
    assert status == 200 and got["query"] == image.name and len(got["hits"]) == 3
    expected = _search_cli(capsys, export_dir, "--gallery", captions, "--image", image, "-k", "3")
    assert [h["id"] for h in got["hits"]] == [h["id"] for h in expected]
    assert [h["score"] for h in got["hits"]] == pytest.approx([h["score"] for h in expected], abs=1e-6)


def _bad_requests(png: bytes) -> list[tuple[str, str, bytes | None, dict, int, str]]:
    """(method, path, body, headers, status, part of the error)."""
    as_json = {"Content-Type": "application/json"}
    return [
        ("GET", "/api/search?q=", None, {}, 400, "empty query"),
        ("GET", "/api/search?k=3", None, {}, 400, "empty query"),
        ("POST", "/api/search", b'{"query": "   "}', as_json, 400, "empty query"),
        ("GET", "/api/search?q=red&k=0", None, {}, 400, "k must be between 1 and 100, got 0"),
        ("GET", "/api/search?q=red&k=101", None, {}, 400, "k must be between 1 and 100, got 101"),
        ("GET", "/api/search?q=red&k=two", None, {}, 400, "k must be an integer"),
        ("POST", "/api/search", b'{"query": "red", "k": 2.5}', as_json, 400, "k must be an integer"),
        ("GET", "/api/search?q=" + "a" * 1001, None, {}, 400, "query too long"),
        ("POST", "/api/search", b"query=red", {"Content-Type": "application/x-www-form-urlencoded"}, 400, "not JSON"),
        ("POST", "/api/search", b'["red"]', as_json, 400, "JSON object"),
        ("POST", "/api/search", b'{"query": 7}', as_json, 400, "the query must be a string, got int"),
        ("POST", "/api/search/image", *_multipart("image", "notes.txt", b"not an image at all"), 415,
         "notes.txt: cannot read image"),
        ("POST", "/api/search/image", *_multipart("image", "cut.png", png[: len(png) // 2]), 415,
         "cut.png: cannot read image"),
        ("POST", "/api/search/image", *_multipart("image", "empty.png", b""), 400, "empty upload"),
        ("POST", "/api/search/image", *_multipart("photo", "a.png", png), 400, "no file in the form field 'image'"),
        ("POST", "/api/search/image", png, {"Content-Type": "image/png"}, 415, "multipart/form-data"),
        ("POST", "/api/search/image", png, {"Content-Type": "multipart/form-data"}, 400, "bad multipart body"),
        ("POST", "/api/search/image", *_multipart("image", "big.png", png + b"\0" * int(MAX_UPLOAD_MB * 2**20)), 413,
         "over the 0.05 MB limit"),
        ("POST", "/api/search/image?k=0", *_multipart("image", "a.png", png), 400, "k must be between"),
        ("GET", "/no/such/page", None, {}, 404, "Not Found: GET /no/such/page"),
        ("GET", "/image/999", None, {}, 404, "no image 999"),
        ("GET", "/image/x", None, {}, 404, "Not Found"),
        ("DELETE", "/api/search", None, {}, 405, "Method Not Allowed"),
    ]


def test_bad_requests_get_a_json_error_and_the_server_keeps_serving(url, gallery):
    png = sorted(gallery[0].iterdir())[0].read_bytes()
    for method, path, body, headers, status, message in _bad_requests(png):
        got_status, got = _call(url, path, body, headers, method)
        assert (got_status, got["status"]) == (status, status), (method, path, got)
        assert message in got["error"], (method, path, got)
        ok, answer = _call(url, "/api/search?q=a+red+circle&k=2")
        assert ok == 200 and len(answer["hits"]) == 2, (method, path)


def test_without_captions_image_search_is_off(searcher):
    plain = Searcher(searcher.model, searcher.images, None, 3)
    with background_server(create_app(plain)) as base:
        with urllib.request.urlopen(base + "/", timeout=30) as response:
            assert '"captions": 0' in response.read().decode()
        status, got = _call(base, "/api/search/image", *_multipart("image", "a.png", b"x"))
        assert status == 404 and "--captions FILE" in got["error"]
        assert _call(base, "/api/search?q=red")[1]["k"] == 3


def test_a_saved_index_serves_the_same_hits(searcher, export_dir, gallery, tmp_path):
    images, captions = gallery
    for source, name in ((images, "images"), (captions, "captions")):
        assert main(["search", str(export_dir), "--gallery", str(source), "--save-index", str(tmp_path / name)]) == 0
    saved = load_searcher(_args(export_dir, "--index", tmp_path / "images"))
    assert saved.text(QUERY, 5)["hits"] == searcher.text(QUERY, 5)["hits"]
    with pytest.raises(ValueError, match="must hold images"):
        load_searcher(_args(export_dir, "--index", tmp_path / "captions"))


@pytest.mark.parametrize("argv, message", [
    (["--gallery", "CAPTIONS"], "--gallery/--index must hold images"),
    (["--gallery", "IMAGES", "--captions", "IMAGES"], "--captions"),
    (["--gallery", "IMAGES", "-k", "0"], "-k must be between 1 and 100"),
    (["--gallery", "IMAGES", "--max-upload-mb", "0"], "--max-upload-mb must be positive"),
])
def test_the_command_refuses_bad_options_before_serving(export_dir, gallery, capsys, argv, message):
    paths = {"IMAGES": gallery[0], "CAPTIONS": gallery[1]}
    assert main(["serve", str(export_dir), *[str(paths.get(a, a)) for a in argv]]) == 1
    assert message in capsys.readouterr().err


def test_bounded_load_loses_nothing(url, tmp_path):
    """400 requests from 8 threads: every one answered with its k hits; the result files are written."""
    assert load_test_main([url, "--requests", "400", "--threads", "8", "-k", "3", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "serve_load.json").read_text())
    assert result["result"]["completed"] == result["result"]["ok"] == 400 and result["result"]["errors"] == 0
    assert result["machine"]["cpu_count"] and "| 400 | 400 | 0 |" in (tmp_path / "serve_load.md").read_text()


def test_the_page_in_a_headless_browser(url, gallery):
    missing = chromium_missing()
    if missing:
        pytest.skip(f"no headless browser: missing {missing} (.ci/run installs chromium and chromium-driver)")
    images, _ = gallery
    image = sorted(images.iterdir())[1]
    with headless_chromium() as driver:
        shown = search_text(driver, url, QUERY, k=4)
        assert shown == [h["id"] for h in _call(url, f"/api/search?q={urllib.parse.quote(QUERY)}&k=4")[1]["hits"]]
        assert "4 results" in driver.find_element("id", "text-status").text
        captions = search_image(driver, image)
        status, api = _call(url, "/api/search/image?k=4", *_multipart("image", image.name, image.read_bytes()))
        assert captions == [h["id"] for h in api["hits"]]
        if os.environ.get("ITR_SCREENSHOT_DIR"):  # for a look at the page; the README's is of the demo (browser.py)
            save_screenshot(driver, Path(os.environ["ITR_SCREENSHOT_DIR"]) / "serve.png")
        driver.find_element("id", "query").clear()
        driver.find_element("id", "search").click()  # an empty query: the page shows the API's error
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(driver, 30).until(lambda d: d.find_element("id", "results").get_attribute("data-state") == "error")
        assert "empty query" in driver.find_element("id", "text-status").text


def test_without_the_serve_extra_the_command_says_what_to_install(export_dir, gallery, capsys, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else find_spec(name, *a))
    assert main(["serve", str(export_dir), "--gallery", str(gallery[0])]) == 1
    assert "needs the serve extra: pip install -r requirements/serve.txt" in capsys.readouterr().err
