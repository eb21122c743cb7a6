"""Weights and training state load without running code: a malicious pickle is refused, not executed."""
import pytest
import torch
from torch import nn

from core.checkpoint import load_torch_state, load_weights, save_torch_state, save_weights
from core.weights import load_state_dict_file


class Payload:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("load", [load_torch_state, load_state_dict_file])
def test_a_pickle_that_would_run_code_is_refused(tmp_path, load):
    marker, path = tmp_path / "pwned", tmp_path / "optimizer.pt"
    torch.save({"optimizer": {"state": Payload(marker)}}, path)
    with pytest.raises(ValueError, match=f"{path}: refused or unreadable"):
        load(path)
    assert not marker.exists()


def test_weights_round_trip_through_safetensors_and_must_fit(tmp_path):
    model = nn.Linear(3, 2)
    save_weights(model, tmp_path / "w.safetensors")
    other = nn.Linear(3, 2)
    load_weights(other, tmp_path / "w.safetensors")
    assert torch.equal(other.weight, model.weight)
    with pytest.raises(ValueError, match="does not fit the model"):
        load_weights(nn.Linear(3, 3, bias=False), tmp_path / "w.safetensors")


def test_training_state_of_plain_values_loads(tmp_path):
    opt = torch.optim.AdamW(nn.Linear(3, 2).parameters())
    save_torch_state({"optimizer": opt.state_dict()}, tmp_path / "s.pt")
    assert load_torch_state(tmp_path / "s.pt")["optimizer"]["param_groups"][0]["lr"] == opt.param_groups[0]["lr"]
    (tmp_path / "torn.pt").write_bytes((tmp_path / "s.pt").read_bytes()[:100])
    with pytest.raises(ValueError, match="torn.pt: refused or unreadable"):
        load_torch_state(tmp_path / "torn.pt")
