"""Shared fixtures for the aggregation tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # The matrices here are tiny; on a shared 2-core machine intra-op threads only add
    # spin-wait contention (measured ~25x slower). Restore the setting for other suites.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
