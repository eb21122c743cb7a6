"""Caption-encoder benchmark matrix: backend x batch size x caption length.

Each backend encodes fixed-shape token batches (random ids, no padding; tokenisation is not part of
this measure) and is timed per shape: the first call at that shape apart (cold: allocation,
compilation, graph capture), then warm calls as p50/p90/p99, throughput, and memory. A backend that
cannot run here (no GPU, no TensorRT) is listed with the reason instead of silently left out.
Throughput is also put against the device's measured matrix-multiply rate, using the encoder's FLOPs
per caption counted by torch, so a reader sees what fraction of the hardware a configuration uses.
"""
from __future__ import annotations

import contextlib
import functools
import resource
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from core.config import BenchConfig
from core.timing import time_calls
from export.runtime import MANIFEST
from student.model import DualEncoder

Encode = Callable[[np.ndarray, np.ndarray], Any]


@dataclass
class Backend:
    """A named way to run the caption encoder; `load` builds it (timed as the backend's cold start)."""

    name: str
    device: str
    load: Callable[[], Encode]
    sync: Callable[[], None] | None = None


def _torch_backend(student: DualEncoder, device: torch.device, name: str, dtype: torch.dtype | None = None,
                   compile_: bool = False) -> Backend:
    def load() -> Encode:
        model = student.to(device).eval()
        forward = torch.compile(model.encode_text, dynamic=True) if compile_ else model.encode_text
        autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext

        @torch.no_grad()
        def encode(ids: np.ndarray, mask: np.ndarray) -> torch.Tensor:
            with autocast():  # host arrays in, like the ONNX rows: the copy to the device is part of the cost
                return forward(torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device))
        return encode
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    return Backend(name, device.type, load, sync)


def _onnx_backend(export_dir: Path, variant: str, provider: str, name: str) -> Backend:
    device = "cpu" if provider == "CPUExecutionProvider" else "cuda"

    def load() -> Encode:
        from export.runtime import OnnxStudent

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = OnnxStudent(export_dir, variant, providers=[provider], io_binding=device == "cuda")
        return model.encode_tokens
    return Backend(name, device, load)


TORCH_KINDS: dict[str, dict[str, Any]] = {
    "pytorch-fp32": {}, "pytorch-bf16-autocast": {"dtype": torch.bfloat16},
    "pytorch-fp16-autocast": {"dtype": torch.float16}, "pytorch-compile": {"compile_": True},
}
ORT_KINDS = {"onnxruntime-cpu": "CPUExecutionProvider", "onnxruntime-cuda": "CUDAExecutionProvider",
             "onnxruntime-tensorrt": "TensorrtExecutionProvider"}


def backends(student: DualEncoder, export_dir: Path, cfg: BenchConfig) -> tuple[list[Backend], list[dict[str, str]]]:
    """Every backend of `cfg.matrix_backends` that can run here, and the others with the reason."""
    import onnxruntime as ort

    from core.io import read_json

    variants = read_json(export_dir / MANIFEST)["variants"]
    cuda = cfg.cuda and torch.cuda.is_available()
    no_cuda = "no CUDA device" if cfg.cuda else "bench.cuda is false"
    available, missing = [], []
    for kind in cfg.matrix_backends:
        if kind in TORCH_KINDS:
            for device in ("cpu", "cuda"):
                name = kind.replace("pytorch", f"pytorch-{device}")
                if device == "cpu" and kind == "pytorch-fp16-autocast":
                    continue  # half-precision autocast is a GPU mode
                if device == "cuda" and not cuda:
                    missing.append({"backend": name, "reason": no_cuda})
                else:
                    available.append(_torch_backend(student, torch.device(device), name, **TORCH_KINDS[kind]))
            continue
        provider = ORT_KINDS[kind]
        for variant, spec in variants.items():
            if provider not in spec["providers"]:
                continue  # each variant where it is built to run (int8 on the CPU, fp16 on GPUs)
            name = f"{kind}-{variant}"
            if provider != "CPUExecutionProvider" and not cfg.cuda:
                missing.append({"backend": name, "reason": no_cuda})
            elif provider not in ort.get_available_providers():
                missing.append({"backend": name, "reason": f"{provider} is not in this onnxruntime build"})
            else:
                available.append(_onnx_backend(export_dir, variant, provider, name))
    return available, missing


def encoder_flops(student: DualEncoder, length: int) -> int:
    """Floating-point operations of one caption of `length` tokens through the text encoder (torch's count)."""
    from torch.utils.flop_counter import FlopCounterMode

    ids = torch.ones(1, length, dtype=torch.long)
    student = student.cpu().eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        student.encode_text(ids, torch.ones_like(ids))
    return int(counter.get_total_flops())


def matmul_rate(device: str, dtype: torch.dtype) -> float:
    """Measured FLOP/s of a large square matrix product on `device` (the hardware's practical ceiling)."""
    n = 8192 if device == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    start, reps = time.perf_counter(), 10
    for _ in range(reps):
        a @ b
    sync()
    return 2 * n ** 3 * reps / (time.perf_counter() - start)


def _ignore_index(encode: Callable[[np.ndarray, np.ndarray], Any], ids: np.ndarray, mask: np.ndarray, i: int) -> Any:
    """One timed call: every repeat encodes the same batch."""
    return encode(ids, mask)


def _memory() -> dict[str, float]:
    out = {"process_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        out["cuda_peak_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
        free, total = torch.cuda.mem_get_info()
        out["cuda_device_used_mib"] = (total - free) / 2**20
    return out


def run_matrix(student: DualEncoder, export_dir: str | Path, cfg: BenchConfig) -> dict[str, Any]:
    """Time every available backend on every (batch, length); rows carry memory and hardware use."""
    export_dir = Path(export_dir)
    found, missing = backends(student, export_dir, cfg)
    vocab = int(student.text_tower.tokenizer.vocab_size)
    lengths = sorted({min(length, student.text_tower.max_length) for length in cfg.caption_lengths})
    rng = np.random.default_rng(0)
    flops = {length: encoder_flops(student, length) for length in lengths}
    rates = {d: matmul_rate(d, torch.float32) for d in {b.device for b in found}}
    if any(b.device == "cuda" for b in found):
        rates["cuda-bf16"] = matmul_rate("cuda", torch.bfloat16)
    rows = []
    for backend in found:
        if backend.device == "cuda":
            torch.cuda.empty_cache()
        start = time.perf_counter()
        try:
            encode = backend.load()
        except Exception as exc:  # a provider that fails to start is reported, not fatal to the benchmark
            missing.append({"backend": backend.name, "reason": f"{type(exc).__name__}: {exc}"})
            continue
        load_ms = (time.perf_counter() - start) * 1000
        for batch in cfg.batch_sizes:
            for length in lengths:
                ids = rng.integers(min(1000, vocab // 2), vocab, size=(batch, length), dtype=np.int64)
                mask = np.ones_like(ids)
                if backend.device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                stats = time_calls(functools.partial(_ignore_index, encode, ids, mask), max(1, cfg.warmup), cfg.repeats, backend.sync,
                                   cfg.matrix_budget_s)
                row = {"backend": backend.name, "device": backend.device, "batch": batch, "length": length,
                       "load_ms": load_ms, **stats, "throughput_per_s": batch * 1000 / stats["mean_ms"]}
                row["encoder_gflop_per_caption"] = flops[length] / 1e9
                rate = rates["cuda-bf16" if "16" in backend.name and backend.device == "cuda" else backend.device]
                row["matmul_rate_tflops"] = rate / 1e12
                row["fraction_of_matmul_rate"] = row["throughput_per_s"] * flops[length] / rate
                rows.append({**row, **_memory()})
    return {"rows": rows, "unavailable": missing, "matmul_rate_tflops": {k: v / 1e12 for k, v in rates.items()},
            "vocab_size": vocab, "settings": {"batch_sizes": cfg.batch_sizes, "caption_lengths": lengths,
                                              "warmup": cfg.warmup, "repeats": cfg.repeats,
                                              "budget_s_per_shape": cfg.matrix_budget_s}}
