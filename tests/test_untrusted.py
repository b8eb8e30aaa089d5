"""Untrusted files are never executed: pickles refused, YAML tags rejected, mismatches named."""

import os

import pytest
import torch
from safetensors.torch import save_file

from cmbench import CmbenchError
from cmbench.models.checkpoint import check_matches, load_checkpoint


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "expert.pt"
    torch.save({"w": torch.zeros(2), "evil": _Payload(str(marker))}, ckpt)
    with pytest.raises(CmbenchError) as e:
        load_checkpoint(ckpt)
    assert str(ckpt) in str(e.value) and "trust_pickle" in str(e.value)
    assert not marker.exists()


def test_safe_formats_load(tmp_path):
    sd = {"a.weight": torch.randn(3, 2), "a.bias": torch.randn(3)}
    save_file(sd, str(tmp_path / "m.safetensors"))
    torch.save(sd, tmp_path / "m.pt")
    for name in ("m.safetensors", "m.pt"):
        out = load_checkpoint(tmp_path / name)
        assert all(torch.equal(out[k], sd[k]) for k in sd)


def test_mismatch_names_keys_and_shapes():
    ref = {"a.weight": torch.zeros(3, 2), "b": torch.zeros(4)}
    with pytest.raises(CmbenchError) as e:
        check_matches({"a.weight": torch.zeros(2, 2), "c": torch.zeros(1)}, ref, "expert shapes.safetensors")
    msg = str(e.value)
    assert "missing ['b']" in msg and "unexpected ['c']" in msg and "a.weight: (2, 2) vs (3, 2)" in msg
