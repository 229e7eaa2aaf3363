"""Atomic writes leave files with the umask's mode (what a plain open() gives), not mkstemp's private 0600."""

from __future__ import annotations

import os
import stat

import pytest

from pipeline import atomic


@pytest.fixture
def umask():
    """Set a umask for one test and restore the caller's afterwards."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield lambda mask: os.umask(mask)
    os.umask(saved)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_get_the_umask_mode(tmp_path, umask, mask, mode):
    umask(mask)
    atomic.write_json(tmp_path / "meta.json", {"k": 1})
    atomic.write_bytes(tmp_path / "sub" / "model.safetensors", b"\0" * 8)
    with atomic.atomic_path(tmp_path / "manifest.parquet") as tmp:
        with open(tmp, "wb") as f:  # writers that open the temporary path themselves (parquet, safetensors)
            f.write(b"x")
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # the reference: what open() gives under this umask
    for name in ("meta.json", "sub/model.safetensors", "manifest.parquet"):
        got = stat.S_IMODE((tmp_path / name).stat().st_mode)
        assert got == mode == stat.S_IMODE(plain.stat().st_mode), (name, oct(got))
    assert atomic._umask() == mask


def test_rewriting_a_file_keeps_the_umask_mode_and_leaves_no_temporaries(tmp_path, umask):
    umask(0o022)
    path = tmp_path / "report.md"
    atomic.write_text(path, "one")
    atomic.write_text(path, "two")
    assert path.read_text() == "two" and stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]
