"""The `re2pix` console script runs the same Typer app as `python cli.py`."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib import import_module
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_console_script_is_cli_app():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts["re2pix"].split(":")
    shim = import_module(module)
    import cli

    assert callable(getattr(shim, func)) and shim.app is cli.app


def test_python_m_re2pix_lists_the_commands_of_cli_py():
    def commands(*argv: str) -> list[str]:
        out = subprocess.run([sys.executable, *argv, "--help"], cwd=ROOT, capture_output=True, text=True, check=True,
                             env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "COLUMNS": "200", "TERM": "dumb"})
        return [line.split()[1] for line in out.stdout.splitlines() if line.startswith("│ ") and len(line.split()) > 2]

    via_module, via_file = commands("-m", "re2pix"), commands("cli.py")
    assert via_module == via_file and {"predict", "export", "demo", "evaluate"} <= set(via_module)
