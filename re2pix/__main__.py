"""`python -m re2pix COMMAND ...` = `re2pix COMMAND ...` = `python cli.py COMMAND ...`."""

from re2pix.cli import main

main()
