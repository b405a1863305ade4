"""A randomly initialised tiny model: a real model, fast on 2 cores."""

from __future__ import annotations

import pytest
import torch

from matra_hpc.model import MatraTransformer, load_model_config
from matra_hpc.tokens import load_vocab


@pytest.fixture(scope="session")
def tiny_model() -> MatraTransformer:
    torch.manual_seed(1234)
    return MatraTransformer(load_model_config("tiny", load_vocab().size)).eval()


@pytest.fixture(scope="session")
def tiny_paper_model() -> MatraTransformer:
    """The paper's value head (one regressed number per value) at the tiny size."""
    torch.manual_seed(1234)
    return MatraTransformer(load_model_config("tiny-paper", load_vocab().size)).eval()
