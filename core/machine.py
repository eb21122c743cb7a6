"""Which machine a measurement ran on: every benchmark result carries this."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from importlib import metadata


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _gpu_name() -> str | None:
    """The first CUDA device's name: from torch when it is loaded, else from nvidia-smi (torch-free runtime)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0] if out else None


def matmul_gflops(seconds: float = 0.5, n: int = 1024) -> float | None:
    """The CPU's float32 matrix-product rate with this process's torch threads, GFLOP/s over about
    `seconds` (None when torch is not loaded). Stored beside stage times: a virtual machine's speed
    can drift by a third within a day, and this yardstick says how fast the machine was when."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        a @ b
        count += 1
    return round(2 * n ** 3 * count / elapsed / 1e9, 1)


def machine_info() -> dict:
    """CPU, cores, memory, GPU (if any) and library versions. Does not import torch itself."""
    torch = sys.modules.get("torch")
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "memory_gib": _memory_gib(),
        "gpu": _gpu_name(),
        "versions": {p: _version(p) for p in ("torch", "timm", "sentence-transformers", "transformers",
                                              "onnx", "onnxruntime", "onnxruntime-gpu", "numpy")},
    }
    info["versions"] = {k: v for k, v in info["versions"].items() if v}
    return info


def describe(info: dict) -> str:
    """One line for reports."""
    gpu = f", GPU {info['gpu']}" if info.get("gpu") else ", no GPU"
    return f"{info['cpu']} ({info['cpu_count']} cores, {info.get('memory_gib')} GiB){gpu}; {info['platform']}"
