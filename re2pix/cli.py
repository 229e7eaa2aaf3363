"""The `re2pix` console script: the same Typer app as `python cli.py` (cli.py stays the one entry point)."""

from __future__ import annotations

from cli import app


def main() -> None:
    app(prog_name="re2pix")


__all__ = ["app", "main"]
