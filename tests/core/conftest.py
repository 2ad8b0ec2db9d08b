"""Fixtures shared by the core tests."""

import pytest
import torch


@pytest.fixture
def float64_default():
    """Make float64 the default dtype for one test (restored afterwards)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
