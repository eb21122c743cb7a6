"""bf16 only on CUDA: on a CPU training and scoring stay float32 whatever `bf16` says."""
import pytest
import torch

from core.precision import autocast, precision

CPU = torch.device("cpu")


@pytest.mark.parametrize("bf16", [False, True])
def test_cpu_is_float32_and_its_context_changes_nothing(bf16):
    assert precision(CPU, bf16) == "float32"
    a = torch.randn(4, 3)
    with autocast(CPU, bf16):
        assert (a @ a.T).dtype == torch.float32
        assert not torch.is_autocast_enabled("cuda") and not torch.is_autocast_enabled("cpu")


def test_cuda_names_recorded_in_caches():
    cuda = torch.device("cuda")  # no GPU needed: only the name is asked for
    assert precision(cuda, True) == "bf16-autocast"
    assert precision(cuda, False) == "float32"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_autocasts_matmuls():
    a = torch.randn(4, 3, device="cuda")
    with autocast(a.device, True):
        assert (a @ a.T).dtype == torch.bfloat16
    with autocast(a.device, False):
        assert (a @ a.T).dtype == torch.float32
