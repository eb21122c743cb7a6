"""The duo student's frozen image trunk (configs/flickr8k-duo.yaml: Lite2 at 260 px + Lite0 on the same pixels)
on a batch of 32 uint8 crops, its convolution weights in the usual (contiguous) layout and in channels-last, the
layout `core.towers.image` now keeps. Writes layout.json beside this file (machine included) and prints it.

    .venv/bin/python bench/results/cpu-epyc-2core/channels-last/layout.py
"""
import json
import time
from pathlib import Path

import torch

from core.config import load_config
from core.machine import machine_info
from core.towers.image import TimmImageTower

REPEATS, BATCH = 3, 32


def per_image_ms(tower: TimmImageTower, crops: torch.Tensor) -> tuple[float, torch.Tensor]:
    with torch.inference_mode():
        tower(crops)  # warm-up
        start = time.perf_counter()
        for _ in range(REPEATS):
            tokens = tower(crops).tokens
    return (time.perf_counter() - start) / (REPEATS * len(crops)) * 1000, tokens


cfg = load_config("configs/flickr8k-duo.yaml")
tower = TimmImageTower(cfg.student.image_tower).eval()
crops = torch.randint(0, 256, (BATCH, 260, 260, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
channels_last, ours = per_image_ms(tower, crops)
contiguous, theirs = per_image_ms(tower.to(memory_format=torch.contiguous_format), crops)
result = {"tower": "tf_efficientnet_lite2 @260 + tf_efficientnet_lite0 (also)", "batch": BATCH, "repeats": REPEATS,
          "threads": torch.get_num_threads(), "ms_per_image": {"contiguous": round(contiguous, 1),
                                                               "channels_last": round(channels_last, 1)},
          "max_abs_difference": float((ours - theirs).abs().max()), "machine": machine_info()}
(Path(__file__).parent / "layout.json").write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
