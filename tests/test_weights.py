"""Weight-loading helpers: formats, containers, prefixes, strict loading, the hub check, random-weight policy."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from pipeline import weights as W


def _tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return nn.Linear(4, 3).state_dict()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".pt", ".bin", ".ckpt"])
def test_load_state_dict_reads_every_format(tmp_path, suffix):
    state = _tiny_state()
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    loaded = W.load_state_dict(path)
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_load_state_dict_unwraps_containers_and_drops_non_tensors(tmp_path):
    state = _tiny_state()
    path = tmp_path / "lightning.ckpt"
    torch.save({"epoch": 3, "state_dict": {**state, "step": 7}}, path)
    loaded = W.load_state_dict(path)
    assert set(loaded) == {"weight", "bias"}
    nested = tmp_path / "nested.pth"
    torch.save({"model": {"state_dict": state}}, nested)
    assert set(W.load_state_dict(nested)) == {"weight", "bias"}


def test_load_state_dict_rejects_unknown_suffix_and_garbage(tmp_path):
    odd = tmp_path / "weights.npz"
    odd.write_bytes(b"x")
    with pytest.raises(W.WeightsFormatError, match=r"weights\.npz.*unknown weights format"):
        W.load_state_dict(odd)
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a pickle at all")
    with pytest.raises(W.WeightsFormatError, match=r"broken\.pth: cannot read weights"):
        W.load_state_dict(broken)
    empty = tmp_path / "empty.pth"
    torch.save({"epoch": 1}, empty)
    with pytest.raises(W.WeightsFormatError, match="no tensors"):
        W.load_state_dict(empty)


def test_strip_prefix_only_strips_prefixes_every_key_has():
    t = torch.zeros(1)
    assert set(W.strip_prefix({"module.net.a": t, "module.net.b": t})) == {"a", "b"}
    assert set(W.strip_prefix({"module.a": t, "b": t})) == {"module.a", "b"}
    assert set(W.strip_prefix({"vae.x": t}, ["vae."])) == {"x"}


def test_load_into_lists_missing_unexpected_and_mismatched(tmp_path):
    model = nn.Linear(4, 3)
    bad = {"weight": torch.zeros(2, 4), "extra": torch.zeros(1)}
    with pytest.raises(W.WeightsFormatError) as err:
        W.load_into(model, bad, tmp_path / "f.pth", "test model")
    msg = str(err.value)
    assert "f.pth" in msg and "1 missing" in msg and "'bias'" in msg and "1 unexpected" in msg
    assert "weight: file (2, 4) vs model (3, 4)" in msg
    good = _tiny_state()
    W.load_into(model, good, "mem", "test model")
    assert torch.equal(model.weight, good["weight"])


def test_require_local_path_names_file_and_option(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(W.MissingWeightsError, match=r"nope\.pth.*--vfm-weights PATH"):
        W.require_local_path(missing, "VFM", "--vfm-weights")
    missing.write_bytes(b"")
    assert W.require_local_path(missing, "VFM", "--vfm-weights") == missing


def test_file_weights_tag_is_a_stable_16_hex_fingerprint(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(_tiny_state(), str(path))
    tag = W.file_weights_tag(path)
    assert re.fullmatch(r"file:[0-9a-f]{16}", tag)
    assert W.file_weights_tag(path) == tag
    assert W.hub_weights_tag("vit_x.tag") == "hub:vit_x.tag"


def test_seeded_is_deterministic_and_restores_the_callers_rng():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    with W.seeded(0):
        a = torch.rand(5)
    with W.seeded(0):
        b = torch.rand(5)
    assert torch.equal(a, b)
    assert torch.equal(torch.rand(3), expected_next)  # the caller's stream is untouched


def test_random_weights_are_refused_unless_allowed(capsys):
    with pytest.raises(W.MissingWeightsError) as err:
        W.refuse_or_warn_random("thing", False, "pass --thing-weights PATH")
    assert "--thing-weights PATH" in str(err.value) and "--allow-random-weights" in str(err.value)
    assert W.refuse_or_warn_random("thing", True, "unused") == "random"
    assert "RANDOM" in capsys.readouterr().err


def test_hub_is_offline_when_the_environment_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert W.hub_offline_by_env()
    assert W.hub_online() is False
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "not a url")
    assert W.hub_online(timeout=0.1) is False


def test_cached_hub_file_is_none_for_an_uncached_repo():
    assert W.cached_hub_file("nobody/not-a-repo-re2pix", ["model.safetensors"]) is None
