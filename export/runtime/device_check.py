"""Check an export on an execution provider: `python -m export.runtime.device_check EXPORT_DIR --device cuda`.

For each variant built for that provider and each way the runtime can call it (plain; I/O binding;
fixed buffers; fixed buffers with CUDA graphs on CUDA), encodes the same captions and images as the
fp32 variant on the CPU provider, reports the smallest cosine to it, and times batch-1 caption
encoding. Torch-free, so it runs wherever the runtime runs. Writes `device_check.json` and
`device_check.md` into `--out`, with the machine.
"""
from __future__ import annotations

import argparse
import functools
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from core.io import write_json, write_text
from core.machine import machine_info
from core.timing import time_calls
from export.runtime.providers import PROVIDER_ALIASES
from export.runtime.session import OnnxStudent, resolve_providers

CAPTIONS = ["a dog runs on the beach", "two children play football in a park near a big tree",
            "a man in a red jacket rides a bicycle down a busy city street at night", "a cat", "people"]


def _modes(device: str) -> dict[str, dict[str, Any]]:
    modes = {"plain": {}, "io_binding": {"io_binding": True}, "static_batch_1": {"static_batch": 1}}
    if device == "cuda":
        modes["cuda_graph_batch_1"] = {"static_batch": 1, "cuda_graph": True}
    return modes


def _images(model: OnnxStudent, n: int, seed: int = 0) -> np.ndarray:
    """Random inputs of the export's image shape: parity does not need real photos."""
    rng = np.random.default_rng(seed)
    image = model.manifest["image"]
    if image["input"] == "pixel_values":
        size = image["preprocess"]["size"]
        return rng.normal(size=(n, 3, size, size)).astype(np.float32)
    return rng.normal(size=(n, image["regions"], image["feature_dim"])).astype(np.float32)


def _encode_caption(model: OnnxStudent, i: int) -> np.ndarray:
    """The i-th timed batch-1 caption encoding."""
    return model.encode_text([CAPTIONS[i % len(CAPTIONS)]])


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))).min())


def check(export_dir: str | Path, device: str, repeats: int = 200, reference_variant: str = "fp32") -> dict[str, Any]:
    provider = resolve_providers(device)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a GPU variant as the CPU reference is allowed here
        reference = OnnxStudent(export_dir, reference_variant, providers="cpu")
    images = _images(reference, 4)
    ref_text, ref_images = reference.encode_text(CAPTIONS), reference.encode_arrays(images)
    rows = []
    for variant, spec in reference.manifest["variants"].items():
        if provider not in spec["providers"]:
            continue
        for mode, options in _modes(device).items():
            model = OnnxStudent(export_dir, variant, providers=device, **options)
            row = {"variant": variant, "mode": mode, "providers": model.providers,
                   "min_cosine_text": _min_cosine(ref_text, model.encode_text(CAPTIONS)),
                   "min_cosine_image": _min_cosine(ref_images, model.encode_arrays(images))}
            row["caption_encoding_batch1"] = time_calls(functools.partial(_encode_caption, model), 20, repeats)
            rows.append(row)
    return {"export": str(export_dir), "device": device, "provider": provider, "machine": machine_info(),
            "reference": f"{reference_variant} variant on the CPU provider", "captions": CAPTIONS, "rows": rows}


def to_markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"# Export check on {result['provider']}", "",
             f"Export `{result['export']}`; machine: {m['cpu']} ({m['cpu_count']} cores), GPU {m.get('gpu') or 'none'}; "
             f"onnxruntime {m['versions'].get('onnxruntime-gpu') or m['versions'].get('onnxruntime')}. "
             f"Cosine against {result['reference']}; batch-1 caption encoding over the {len(result['captions'])} "
             "captions in turn (host arrays in, host arrays out, tokenisation included).", "",
             "| variant | mode | min cosine text | min cosine image | p50 ms | p95 ms |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        t = r["caption_encoding_batch1"]
        lines.append(f"| {r['variant']} | {r['mode']} | {r['min_cosine_text']:.6f} | {r['min_cosine_image']:.6f} | "
                     f"{t['p50_ms']:.3f} | {t['p95_ms']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export.runtime.device_check", description=__doc__.splitlines()[0])
    ap.add_argument("export_dir")
    ap.add_argument("--device", default="cuda", choices=sorted(PROVIDER_ALIASES))
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--reference", default="fp32", help="variant run on the CPU provider as the reference (default fp32)")
    ap.add_argument("--out", default=".", help="directory for device_check.json and device_check.md")
    args = ap.parse_args(argv)
    result = check(args.export_dir, args.device, args.repeats, args.reference)
    out = Path(args.out)
    write_json(out / "device_check.json", result)
    write_text(out / "device_check.md", to_markdown(result))
    print(to_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
