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
