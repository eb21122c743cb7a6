"""Where a teacher training step's time goes on this CPU, and how close it runs to the machine's matrix-product peak.

One step of the Flickr8k teacher as a fit over frozen caches runs it: the image tokens' projection (the image tower
is frozen, so its cached tokens are the input), MiniLM's last two layers over the cached first four (128 training
captions of ../shared/data/flickr8k-dev, drawn with seed 0), SCAN over the batch's 128 x 128 pairs, the VSE++
hinge with the hardest negatives, backward and the AdamW step. The image tokens are random (their values do not
change the work), for three teachers of configs/flickr8k.yaml: the configured one (Lite0 at 224 px: 7 x 7 tokens of
1,280 channels) and its variants lite2-260 (9 x 9 of 1,280) and two-backbone (9 x 9 of 2,560). For each: seconds per step (median of
REPEATS), the share of the step in matrix products (aten mm / addmm / bmm, from torch.profiler) with their FLOPs,
and the rate they ran at, against the rate of a 2048 x 2048 float32 product on the same threads, timed between the
steps (this VM's rate moves by up to half from minute to minute, so only rates measured together compare). Writes
step_profile.json and step_profile.md beside this file.

    .venv/bin/python bench/results/cpu-epyc-2core/teacher-step/step_profile.py
"""
import json
import random
import statistics
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from core.config import load_config
from core.machine import machine_info
from core.paths import resolve_path
from core.towers.image import TokenOutput
from distill.losses import hinge
from distill.models import new_model

REPEATS, BATCH, STEPS_PER_EPOCH = 5, 128, 107  # 13,750 training captions in batches of 128
TEACHERS = ("configured", "lite2-260", "two-backbone")
GRID = {224: 49, 260: 81}  # EfficientNet-Lite's stride-32 grid at each input size
MATMULS = ("aten::mm", "aten::addmm", "aten::bmm")


def gemm_gflops(a: torch.Tensor, b: torch.Tensor, products: int = 3) -> float:
    start = time.perf_counter()
    for _ in range(products):
        a @ b
    return 2 * 2048**3 * products / (time.perf_counter() - start) / 1e9


def teacher_step(cfg, captions: list[str]):
    torch.manual_seed(0)
    model = new_model("teacher", cfg.teacher, resolve_path(cfg.teacher.text_tower.model), None).train()
    regions, channels = GRID[cfg.teacher.image_tower.image_size], model.image_tower.out_dim
    tokens = model.tokenize(captions)
    with torch.no_grad():
        text_cut = model.text_tower.trunk(tokens["input_ids"], tokens["attention_mask"])
    image_tokens = torch.randn(BATCH, regions, channels).relu()
    image_cut = TokenOutput(image_tokens, torch.ones(BATCH, regions, dtype=torch.bool), image_tokens.mean(1))
    index = torch.arange(BATCH)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        sims = model.score(model.images_from(model.image_tower.top(image_cut)),
                           model.captions_from(model.text_tower.top(text_cut)))
        loss = hinge(sims, index, cfg.teacher.margin, True)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return step, (regions, channels)


def measure(step, shape: tuple[int, int]) -> dict:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    step()
    step()
    a @ b
    seconds, peaks = [], []
    for _ in range(REPEATS):
        peaks.append(gemm_gflops(a, b))
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        step()
    events = [e for e in prof.key_averages() if e.key in MATMULS]
    total = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e6
    matmul_s = sum(e.self_cpu_time_total for e in events) / 1e6
    flops = sum(e.flops for e in events)
    per_step = statistics.median(seconds)
    return {"tokens": shape[0], "channels": shape[1], "seconds_per_step": round(per_step, 3), "seconds_per_epoch_of_107_steps": round(per_step * STEPS_PER_EPOCH),
            "matmul_share": round(matmul_s / total, 3), "matmul_gflop": round(flops / 1e9, 1),
            "matmul_gflops_achieved": round(flops / matmul_s / 1e9, 1),
            "gemm_2048_gflops_between_steps": round(statistics.median(peaks), 1)}


data = json.loads(Path("../shared/data/flickr8k-dev/dataset_flickr8k.json").read_text())
captions = random.Random(0).sample([s["raw"] for im in data["images"] if im["split"] == "train"
                                    for s in im["sentences"]], BATCH)
base = load_config("configs/flickr8k.yaml")
rows = {name: measure(*teacher_step(load_config("configs/flickr8k.yaml", base.experiment.teacher_variants.get(name, [])),
                                    captions)) for name in TEACHERS}
result = {"batch": BATCH, "repeats": REPEATS, "threads": torch.get_num_threads(), "teachers": rows, "machine": machine_info()}
here = Path(__file__).parent
(here / "step_profile.json").write_text(json.dumps(result, indent=2) + "\n")
lines = [f"# Teacher training step, batch {BATCH}, {result['threads']} threads ({result['machine'].get('cpu', '')})", "",
         "| teacher | image tokens | s per step | s per epoch (107 steps) | matrix products: share of step | GFLOP | "
         "GFLOP/s | 2048 x 2048 product between steps, GFLOP/s |", "|---|---|---|---|---|---|---|---|"]
for name, r in rows.items():
    lines.append(f"| {name} | {r['tokens']} x {r['channels']} | {r['seconds_per_step']} | {r['seconds_per_epoch_of_107_steps']} | "
                 f"{r['matmul_share']:.0%} | {r['matmul_gflop']} | {r['matmul_gflops_achieved']} | "
                 f"{r['gemm_2048_gflops_between_steps']} |")
(here / "step_profile.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
