"""Shared fixtures for the pvae test suite.

Every test starts from the same state: an empty Pyro param store, seed 0 for
Pyro / torch / numpy / random, and Pyro's validation switched on (so that bad
distributions or shapes raise rather than silently broadcast).
"""

from __future__ import annotations

import os
from pathlib import Path

import pyro
import pyro.infer
import pytest
import torch
from hypothesis import settings

# Property-based tests (tests/test_fuzz_inputs.py): no per-example deadline (the
# suite runs beside other processes); under CI, the same examples every run.
settings.register_profile("pvae", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True, database=None, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "pvae")

# Small tensors only: more threads make CPU tests slower, not faster, and the
# suite runs beside other processes.
torch.set_num_threads(1)

# The repository is cloned at some directory X; the shared data folder sits
# beside it, at X/../shared/data.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _fresh_pyro_state():
    """Clear the param store, seed everything with 0, enable Pyro validation."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    previous = pyro.infer.is_validation_enabled()
    pyro.enable_validation(True)
    yield
    pyro.enable_validation(previous)
    pyro.clear_param_store()


@pytest.fixture
def shared_data() -> Path:
    """Path of the shared data folder (MNIST IDX, IHDP CSV, ...); skips if absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"shared data folder not found at {SHARED_DATA} (expected beside the "
            "repository clone, as ../shared/data)"
        )
    return SHARED_DATA
