"""Load test of a running `itr-distill serve`: many text queries from a few threads, latency and errors.

`python -m export.runtime.load_test http://127.0.0.1:8000 --requests 2000 --threads 8 --out DIR` writes
`serve_load.json` and `serve_load.md` (with the machine). Each thread keeps one HTTP/1.1 connection open,
as a browser does; a request counts as an error unless it returns 200 with the k hits asked for. Only the
standard library speaks HTTP here, so the figures are the server's, not a client framework's.
"""
from __future__ import annotations

import argparse
import http.client
import json
import shlex
import sys
import threading
import time
import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Any

from core.machine import describe, machine_info
from core.timing import summarize

DEFAULT_QUERIES = ["a red circle", "a small blue square left of a big green triangle",
                   "two yellow diamonds", "a large purple circle above a tiny red square",
                   "there is a green triangle to the right of a blue circle"]


def _one(conn: http.client.HTTPConnection, path: str, hits: int) -> tuple[float, float | None, str | None]:
    """(client latency ms, server latency ms, error or None) of one GET that should return `hits` hits."""
    start = time.perf_counter()
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as exc:
        conn.close()  # reconnects on the next request
        return (time.perf_counter() - start) * 1e3, None, f"{type(exc).__name__}: {exc}"
    elapsed = (time.perf_counter() - start) * 1e3
    if response.status != 200:
        return elapsed, None, f"HTTP {response.status}"
    try:
        result = json.loads(body)
        if len(result["hits"]) != hits:
            return elapsed, None, f"{len(result['hits'])} hits, expected {hits}"
        return elapsed, float(result["latency_ms"]), None
    except (ValueError, KeyError, TypeError) as exc:
        return elapsed, None, f"bad answer: {exc}"


def run_load(url: str, queries: list[str], requests: int, threads: int, k: int = 5, warmup: int = 10) -> dict[str, Any]:
    """Send `requests` GET /api/search from `threads` threads (query i of the cycle for request i)."""
    if requests <= 0 or threads <= 0 or not queries:
        raise ValueError("need requests > 0, threads > 0 and at least one query")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"{url}: expected http://HOST:PORT")
    paths = [f"/api/search?{urllib.parse.urlencode({'q': q, 'k': k})}" for q in queries]

    def connect() -> http.client.HTTPConnection:
        return http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=60)

    warm = connect()
    warm.request("GET", "/api/info")
    info = json.loads(warm.getresponse().read())
    expected = min(k, info["images"])  # a gallery smaller than k returns all of it
    for i in range(warmup):  # first calls allocate ONNX Runtime's buffers: not part of the figures
        _one(warm, paths[i % len(paths)], expected)
    warm.close()
    results: list[tuple[float, float | None, str | None] | None] = [None] * requests
    counter = iter(range(requests))
    lock = threading.Lock()

    def worker() -> None:
        conn = connect()
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            results[i] = _one(conn, paths[i % len(paths)], expected)
        conn.close()

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    start = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    wall = time.perf_counter() - start
    done = [r for r in results if r is not None]
    errors = Counter(r[2] for r in done if r[2])
    ok = [r for r in done if not r[2]]
    return {
        "url": url, "server": info, "requests": requests, "threads": threads, "k": k, "queries": len(queries), "warmup": warmup,
        "completed": len(done), "ok": len(ok), "errors": sum(errors.values()) + requests - len(done),
        "error_kinds": dict(errors.most_common(5)), "wall_s": wall, "throughput_rps": len(ok) / wall,
        "latency": summarize([r[0] for r in ok]) if ok else None,
        "server_latency": summarize([r[1] for r in ok]) if ok else None,
    }


def _ms(summary: dict[str, float] | None, key: str) -> str:
    return f"{summary[key]:.2f}" if summary else "-"


def _server(info: dict[str, Any]) -> str:
    return f"{info['images']} images, {info['captions']} captions, variant {info['variant']}"


def markdown(result: dict[str, Any], machine: dict[str, Any], command: str) -> str:
    lat, srv = result["latency"], result["server_latency"]
    return "\n".join([
        "# `itr-distill serve` load test",
        "",
        f"Machine: {describe(machine)}",
        "",
        f"`{command}`",
        "",
        f"{result['requests']} GET /api/search (k={result['k']}, {result['queries']} queries in turn) from "
        f"{result['threads']} threads, one keep-alive connection each, against {result['url']}, after "
        f"{result['warmup']} warm-up requests. Server: {_server(result['server'])}.",
        "",
        "| requests | ok | errors | wall (s) | throughput (req/s) |",
        "|---|---|---|---|---|",
        f"| {result['requests']} | {result['ok']} | {result['errors']} | {result['wall_s']:.2f} | "
        f"{result['throughput_rps']:.1f} |",
        "",
        "| latency (ms) | p50 | p90 | p99 | max |",
        "|---|---|---|---|---|",
        f"| request, as the client sees it | {_ms(lat, 'p50_ms')} | {_ms(lat, 'p90_ms')} | {_ms(lat, 'p99_ms')} | "
        f"{_ms(lat, 'max_ms')} |",
        f"| encode + rank, in the server (`latency_ms`) | {_ms(srv, 'p50_ms')} | {_ms(srv, 'p90_ms')} | "
        f"{_ms(srv, 'p99_ms')} | {_ms(srv, 'max_ms')} |",
        "",
        *([f"Errors: {result['error_kinds']}", ""] if result["errors"] else []),
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export.runtime.load_test", description=__doc__)
    ap.add_argument("url", help="base URL of a running `itr-distill serve`, e.g. http://127.0.0.1:8000")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("-k", type=int, default=5)
    ap.add_argument("--queries", help="a text file, one query per line (default: a few built-in captions)")
    ap.add_argument("--out", help="directory for serve_load.json and serve_load.md")
    args = ap.parse_args(argv)
    queries = DEFAULT_QUERIES
    if args.queries:
        queries = [q.strip() for q in Path(args.queries).read_text(encoding="utf-8").splitlines() if q.strip()]
    result = run_load(args.url, queries, args.requests, args.threads, args.k)
    machine = machine_info()
    command = "python -m export.runtime.load_test " + shlex.join(sys.argv[1:] if argv is None else argv)
    report = markdown(result, machine, command)
    print(report)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        payload = {"command": command, "machine": machine, "result": result}
        (out / "serve_load.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        (out / "serve_load.md").write_text(report, encoding="utf-8")
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
