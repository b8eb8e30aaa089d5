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


@pytest.mark.parametrize("content", ["empty", "text", "random", "truncated"])
def test_damaged_checkpoints_are_named_not_blamed_on_pickle(tmp_path, content):
    """An empty, text, random-bytes or truncated .pt is one line naming the file, never an
    EOFError/KeyError traceback nor a request to trust pickles."""
    ckpt = tmp_path / "expert.pt"
    torch.save({"w": torch.zeros(64)}, tmp_path / "whole.pt")
    whole = (tmp_path / "whole.pt").read_bytes()
    ckpt.write_bytes(
        {"empty": b"", "text": b"hello world\n", "random": os.urandom(2000), "truncated": whole[: len(whole) // 2]}[
            content
        ]
    )
    for trust in (False, True):
        with pytest.raises(CmbenchError) as e:
            load_checkpoint(ckpt, trust_pickle=trust)
        msg = str(e.value)
        assert msg.startswith(str(ckpt)) and "\n" not in msg and "trust_pickle" not in msg, msg


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
