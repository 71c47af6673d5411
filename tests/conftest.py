"""Suite-wide settings."""

from __future__ import annotations

import pytest

pytest_plugins = ["tests.redis_support"]  # the redis_server fixture


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """One intra-op thread in the test process: on a busy 2-core machine two spinning OpenMP teams made a tiny
    clip ~10x slower, and the servers the tests start need the other core."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
