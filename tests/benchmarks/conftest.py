"""The benchmarks' smoke tests build runs, and building a run sets torch's thread count: each test
gets the count it started with back."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
