"""`itr-distill serve`: a search page and JSON API over an exported student, without torch.

Text queries rank a gallery of images (`--gallery DIR`, or a saved `--index`), image uploads rank a
caption file (`--captions FILE`). This module is the web layer only (routes, body limits, JSON errors);
the search and its rules are `searcher.py`'s. It is the one runtime module that imports the web
framework, and only when an app is made or served, so the CLI's parser, and `itr-distill search` in a
runtime install without the `serve` extra, never need it.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from export.runtime.providers import PROVIDER_ALIASES
from export.runtime.searcher import K_MAX, ApiError, Searcher, load_searcher, thumbnail

if TYPE_CHECKING:
    from starlette.applications import Starlette

__all__ = ["ApiError", "Searcher", "add_arguments", "background_server", "create_app", "load_searcher", "main"]

PAGE = Path(__file__).with_name("serve_page.html")
MISSING_EXTRA = "itr-distill serve needs the serve extra: pip install -r requirements/serve.txt (or '.[serve]')"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("export_dir", help="an export directory (manifest.json, *.onnx, tokenizer/)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--gallery", help="a directory of images, searched by text queries")
    source.add_argument("--index", help="a saved image index directory (`itr-distill search --save-index`)")
    p.add_argument("--captions", help="a text file with one caption per line, searched by image uploads "
                                      "(without it, image search is off)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("-k", "--top-k", type=int, default=5, help=f"default results per query (1..{K_MAX}, default 5)")
    p.add_argument("--variant", default="fp32", help="exported variant: fp32, optimized, fp16, int8 (default fp32)")
    p.add_argument("--device", default="cpu", choices=sorted(PROVIDER_ALIASES), help="execution provider (default cpu)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size for indexing the galleries at start-up")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest request body accepted (default 10 MB)")
    p.add_argument("--access-log", action="store_true", help="log every request (uvicorn's access log)")


async def read_body(chunks: AsyncIterator[bytes], declared: str | None, limit: int) -> bytes:
    """The request body, refused with a 413 past `limit` bytes; the rest is read and dropped (up to a bound)
    so that the client, still sending, gets the answer instead of a reset connection."""
    too_big = ApiError(413, f"request body over the {limit / 2**20:.3g} MB limit (--max-upload-mb)")
    body, size = bytearray(), 0
    if declared and declared.isdigit() and int(declared) > limit:
        body = None
    async for chunk in chunks:
        size += len(chunk)
        if body is not None and size <= limit:
            body += chunk
        else:
            body = None
            if size > limit + 64 * 2**20:
                break
    if body is None:
        raise too_big
    return bytes(body)


def render_page(searcher: Searcher, max_upload: int) -> str:
    config = {**searcher.info(), "max_upload": max_upload}
    blob = json.dumps(config).replace("<", "\\u003c")  # raw text inside <script>: no "</script>" can appear
    return PAGE.read_text(encoding="utf-8").replace("__CONFIG__", blob)


def create_app(searcher: Searcher, max_upload_mb: float = 10.0) -> Starlette:
    """The Starlette app: `/` (the page), `/image/{n}`, `/api/info`, `/api/search`, `/api/search/image`."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    limit = int(max_upload_mb * 2**20)
    page = render_page(searcher, limit)

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def info(request: Request) -> Response:
        return JSONResponse(searcher.info())

    async def image(request: Request) -> Response:
        n = request.path_params["n"]
        if not 0 <= n < len(searcher.images):
            raise ApiError(404, f"no image {n} (the gallery has {len(searcher.images)})")
        try:
            data = await run_in_threadpool(thumbnail, searcher.images.ids[n])
        except (OSError, ValueError) as exc:
            raise ApiError(404, f"image {n} cannot be read: {exc}") from None
        return Response(data, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    async def search_text(request: Request) -> Response:
        if request.method == "GET":
            query, k = request.query_params.get("q"), request.query_params.get("k")
        else:
            body = await read_body(request.stream(), request.headers.get("content-length"), limit)
            try:
                payload = json.loads(body or b"null")
            except ValueError:
                raise ApiError(400, 'body is not JSON: send {"query": "...", "k": 5}') from None
            if not isinstance(payload, dict):
                raise ApiError(400, 'body must be a JSON object: {"query": "...", "k": 5}')
            query, k = payload.get("query", payload.get("q")), payload.get("k")
        return JSONResponse(await run_in_threadpool(searcher.text, query, k))

    async def search_image(request: Request) -> Response:
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise ApiError(415, "send the image as multipart/form-data, in a field named 'image'")
        body = await read_body(request.stream(), request.headers.get("content-length"), limit)

        async def replay() -> dict[str, Any]:
            nonlocal body
            chunk, body = body, b""
            return {"type": "http.request", "body": chunk, "more_body": False}

        try:  # the body, already read within the limit, replayed to Starlette's multipart parser
            async with Request(request.scope, replay).form(max_files=1, max_fields=4) as form:
                upload, k = form.get("image"), request.query_params.get("k", form.get("k"))
                if upload is None or isinstance(upload, str):
                    raise ApiError(400, "no file in the form field 'image'")
                data, name = await upload.read(), upload.filename or "upload"
        except HTTPException as exc:
            raise ApiError(400, f"bad multipart body: {exc.detail}") from None
        return JSONResponse(await run_in_threadpool(searcher.image, data, name, k))

    async def error(request: Request, exc: Exception) -> Response:
        """Every refusal and failure as `{"error", "status"}` (Starlette's own 404/405 too, with their headers)."""
        headers = None
        if isinstance(exc, ApiError):
            status, message = exc.status, exc.message
        elif isinstance(exc, HTTPException):
            status, message = exc.status_code, f"{exc.detail}: {request.method} {request.url.path}"
            headers = exc.headers
        else:
            status, message = 500, f"internal error: {type(exc).__name__}: {exc}"
        return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)

    routes = [Route("/", index), Route("/api/info", info), Route("/image/{n:int}", image),
              Route("/api/search", search_text, methods=["GET", "POST"]),
              Route("/api/search/image", search_image, methods=["POST"])]
    return Starlette(routes=routes, exception_handlers={ApiError: error, HTTPException: error, Exception: error})


def check_extra() -> None:
    missing = [m for m in ("starlette", "uvicorn") if importlib.util.find_spec(m) is None]
    if not (importlib.util.find_spec("python_multipart") or importlib.util.find_spec("multipart")):
        missing.append("python-multipart")
    if missing:
        raise ImportError(f"{MISSING_EXTRA} (missing: {', '.join(missing)})")


@contextmanager
def background_server(app: Starlette, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve `app` from a thread (port 0: a free one) and yield its base URL; for tests and benchmarks."""
    import socket

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.01)
    if not server.started:
        sock.close()
        raise RuntimeError("the server did not start (see its log above)")
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def main(args: argparse.Namespace) -> int:
    check_extra()
    if args.max_upload_mb <= 0:
        raise ValueError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    import uvicorn

    searcher = load_searcher(args)
    app = create_app(searcher, args.max_upload_mb)
    image_search = f", {len(searcher.captions)} captions" if searcher.captions else ", image search off (no --captions)"
    print(f"itr-distill serve: {len(searcher.images)} images{image_search}; http://{args.host}:{args.port}/",
          file=sys.stderr)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: listening on {args.host}, reachable from other machines; there is no authentication",
              file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=args.access_log)
    return 0
