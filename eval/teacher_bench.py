"""`itr-distill bench teacher`: how fast the teacher scores all pairs, against two references.

Three timings side by side in one process on the same inputs (SCAN's default size unless told
otherwise: 1024-d features, 36 regions, captions of up to 16 words, 200 images x 1,000 captions):
  loop          one caption at a time, attended vectors materialised (how the SCAN reference evaluates)
  batched       `teacher.attention.scan_similarity`: all pairs, blocked, attended vectors never formed
  matmul-floor  the single matrix product that computes the logit of every valid word with every
                region; exact scores need at least that much arithmetic
plus, on CUDA, the batched scorer under bf16 autocast, and with `--imram STEPS` IMRAM's text-side
iterative matching (random memory weights: its cost does not depend on them). Scores are compared
with the loop's.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from core.config import ImramConfig, ScanConfig
from core.io import write_json, write_text
from core.machine import describe, machine_info
from core.timing import time_calls
from teacher.attention import scan_similarity
from teacher.matching import Matcher
from teacher.reference import scan_similarity_loop

SCAN_LAMBDAS = {"t2i": (9.0, 6.0), "i2t": (4.0, 5.0)}


def synthetic_inputs(images: int, captions: int, regions: int, words: int, dim: int, seed: int,
                     device: torch.device) -> tuple[torch.Tensor, ...]:
    """Unit-norm random features; caption lengths uniform between words/2 and words (padded to `words`)."""
    g = torch.Generator().manual_seed(seed)
    reg = F.normalize(torch.randn(images, regions, dim, generator=g), dim=-1)
    wrd = F.normalize(torch.randn(captions, words, dim, generator=g), dim=-1)
    lengths = torch.randint((words + 1) // 2, words + 1, (captions,), generator=g)
    word_mask = torch.arange(words)[None] < lengths[:, None]
    return reg.to(device), torch.ones(images, regions, dtype=torch.bool, device=device), wrd.to(device), word_mask.to(device)


def run_teacher_bench(images: int = 200, captions: int = 1000, regions: int = 36, words: int = 16, dim: int = 1024,
                      direction: str = "t2i", device: str = "cpu", repeats: int = 3, loop_repeats: int = 1,
                      chunk: int | None = None, seed: int = 0, imram_steps: int = 0) -> dict[str, Any]:
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    chunk = chunk or (1 << 20 if dev.type == "cpu" else 1 << 26)  # CPU: a block fits the cache; GPU: fill the device
    reg, rmask, wrd, wmask = synthetic_inputs(images, captions, regions, words, dim, seed, dev)
    lam = SCAN_LAMBDAS[direction]
    flat_words, flat_regions = wrd[wmask], reg.reshape(-1, dim)  # padding words need no logits
    results: dict[str, torch.Tensor] = {}

    def keep(name, fn):
        def call(_: int):
            with torch.no_grad():
                results[name] = fn()
        return call

    methods = {
        "loop": keep("loop", lambda: scan_similarity_loop(reg, rmask, wrd, wmask, direction, "lse", *lam)),
        "batched": keep("batched", lambda: scan_similarity(reg, rmask, wrd, wmask, direction, "lse", *lam, chunk)),
        "matmul-floor": keep("floor", lambda: flat_words @ flat_regions.T),
    }
    if dev.type == "cuda":
        def bf16():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return scan_similarity(reg, rmask, wrd, wmask, direction, "lse", *lam, chunk).float()
        methods["batched-bf16-autocast"] = keep("bf16", bf16)
    if imram_steps:
        torch.manual_seed(seed)
        imram = Matcher("imram", ScanConfig(max_chunk_elements=chunk), ImramConfig(imram_steps, "text"), dim).to(dev)
        methods[f"imram-text-{imram_steps}-steps"] = keep("imram", lambda: imram.all_pairs(reg, rmask, wrd, wmask))
    rows = []
    for name, fn in methods.items():
        n = loop_repeats if name == "loop" or name.startswith("imram") else repeats
        timing = time_calls(fn, warmup=1, repeats=n, sync=sync)
        rows.append({"method": name, "seconds": timing["p50_ms"] / 1000, "pairs_per_s": images * captions * 1000 / timing["p50_ms"],
                     "repeats": n, "first_call_s": timing["first_call_ms"] / 1000})
        if name == "matmul-floor":
            results.pop("floor")  # the largest tensor of the run: free it before the next method
    by = {r["method"]: r for r in rows}
    out = {
        "machine": machine_info(),
        "device": str(dev),
        "settings": {"images": images, "captions": captions, "regions": regions, "words": words, "dim": dim,
                     "direction": direction, "aggregation": "lse", "lambda_softmax": lam[0], "lambda_lse": lam[1],
                     "max_chunk_elements": chunk, "dtype": "float32", "repeats": repeats, "loop_repeats": loop_repeats,
                     "threads": torch.get_num_threads(), "seed": seed, "imram_steps": imram_steps},
        "rows": rows,
        "speedup_vs_loop": by["loop"]["seconds"] / by["batched"]["seconds"],
        "ratio_to_matmul_floor": by["batched"]["seconds"] / by["matmul-floor"]["seconds"],
        "max_abs_diff_vs_loop": float((results["batched"] - results["loop"]).abs().max()),
    }
    if "bf16" in results:
        out["bf16_speedup_vs_loop"] = by["loop"]["seconds"] / by["batched-bf16-autocast"]["seconds"]
        out["bf16_max_abs_diff_vs_loop"] = float((results["bf16"] - results["loop"]).abs().max())
    return out


def to_markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        "# Teacher scoring: batched SCAN against the per-caption loop and the matmul floor", "",
        f"{s['images']} images x {s['captions']} captions, {s['regions']} regions, up to {s['words']} words, "
        f"{s['dim']}-d features, {s['direction']}, LSE; {s['dtype']}; device `{result['device']}`, "
        f"{s['threads']} threads. Median of {s['repeats']} timed runs (loop, IMRAM: {s['loop_repeats']}) after one warm-up.", "",
        "| method | seconds | pairs/s |", "|---|---|---|",
    ]
    lines += [f"| {r['method']} | {r['seconds']:.3f} | {r['pairs_per_s']:,.0f} |" for r in result["rows"]]
    lines += ["", f"- batched vs loop: **{result['speedup_vs_loop']:.1f}x** faster, largest score difference "
                  f"{result['max_abs_diff_vs_loop']:.2e}",
              f"- batched / matmul floor: **{result['ratio_to_matmul_floor']:.2f}x**"]
    if "bf16_speedup_vs_loop" in result:
        lines.append(f"- bf16 autocast vs loop: {result['bf16_speedup_vs_loop']:.1f}x, largest score difference "
                     f"{result['bf16_max_abs_diff_vs_loop']:.2e}")
    lines += ["", f"Machine: {describe(result['machine'])}.", ""]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="itr-distill bench teacher", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--captions", type=int, default=1000)
    ap.add_argument("--regions", type=int, default=36)
    ap.add_argument("--words", type=int, default=16, help="longest caption (lengths vary from half of it)")
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--direction", choices=sorted(SCAN_LAMBDAS), default="t2i")
    ap.add_argument("--device", default="cpu", help="cpu | cuda[:N]")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--loop-repeats", type=int, default=1)
    ap.add_argument("--chunk", type=int, help="word-region logits per block (default: 2^20 on CPU, 2^26 on CUDA)")
    ap.add_argument("--imram", type=int, default=0, metavar="STEPS",
                    help="also time IMRAM's text side with this many steps (timed like the loop)")
    ap.add_argument("--out", default="bench/teacher", help="directory for teacher_scoring.json and .md")
    return ap


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {args.device}: CUDA is not available on this machine")
    result = run_teacher_bench(args.images, args.captions, args.regions, args.words, args.dim, args.direction,
                               args.device, args.repeats, args.loop_repeats, args.chunk, imram_steps=args.imram)
    out = Path(args.out)
    write_json(out / "teacher_scoring.json", result)
    text = to_markdown(result)
    write_text(out / "teacher_scoring.md", text)
    print(text)
    return 0
