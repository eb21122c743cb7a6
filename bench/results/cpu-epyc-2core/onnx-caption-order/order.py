"""ONNX Runtime caption encoding of an exported student: captions in the order given, each batch padded to its
longest (what `OnnxStudent.encode_text` did up to commit d3af0d3), against `encode_text`, which runs them
in order of length. The first 512 captions of Flickr8k's 500 val images, batches of 64, the fp32 and int8 exports
of a `make flickr8k` run; median of three passes each. Writes order.json and order.md beside this file.

    .venv/bin/python bench/results/cpu-epyc-2core/onnx-caption-order/order.py runs/flickr8k
"""
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from core.config import load_config
from core.machine import machine_info
from distill.stages import load_split
from export.runtime import OnnxStudent

CAPTIONS, BATCH, REPEATS = 512, 64, 3


def in_given_order(runtime: OnnxStudent, texts: list[str]) -> np.ndarray:
    return np.concatenate([runtime.encode_tokens(**runtime.tokenize(texts[s:s + BATCH]))
                           for s in range(0, len(texts), BATCH)])


def timed(encode, runtime: OnnxStudent, texts: list[str]) -> tuple[float, np.ndarray]:
    encode(runtime, texts[:BATCH])  # warm-up
    seconds = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        out = encode(runtime, texts)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds) / len(texts) * 1e3, out


run_dir = Path(sys.argv[1])
texts = list(load_split(load_config("configs/flickr8k.yaml"), "test").captions)[:CAPTIONS]
rows = {}
for variant in ("fp32", "int8"):
    runtime = OnnxStudent(run_dir / "export", variant, providers="cpu")
    given_ms, given = timed(in_given_order, runtime, texts)
    sorted_ms, by_length = timed(lambda r, t: r.encode_text(t, BATCH), runtime, texts)
    rows[variant] = {"ms_per_caption_given_order": round(given_ms, 2), "ms_per_caption_length_order": round(sorted_ms, 2),
                     "max_abs_difference": float(np.abs(given - by_length).max())}
here = Path(__file__).parent
result = {"captions": CAPTIONS, "batch": BATCH, "repeats": REPEATS, "variants": rows, "machine": machine_info()}
(here / "order.json").write_text(json.dumps(result, indent=2) + "\n")
lines = [f"# ONNX caption encoding, {CAPTIONS} captions in batches of {BATCH} ({result['machine'].get('cpu', '')})", "",
         "| variant | given order, ms a caption | length order (`encode_text`), ms a caption | max abs difference |",
         "|---|---|---|---|"]
lines += [f"| {v} | {r['ms_per_caption_given_order']} | {r['ms_per_caption_length_order']} | {r['max_abs_difference']:.1e} |"
          for v, r in rows.items()]
(here / "order.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
