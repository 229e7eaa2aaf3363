"""Suite-wide settings."""

from __future__ import annotations

import torch


def pytest_configure(config) -> None:
    # Every model in the tests is tiny: one intra-op thread is faster than two contended ones on a 2-core machine
    # (measured 10-25x on busy machines), and it makes CPU float results independent of the machine's core count.
    torch.set_num_threads(1)
