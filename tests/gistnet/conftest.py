"""Fixtures shared by the substitution-layout tests: a tiny random GPT-2 teacher and a
batch of token windows for it (`tests.gistnet.test_substitution` sizes them)."""

from __future__ import annotations

import pytest
import torch

from tests.gistnet.test_substitution import HORIZON, VOCAB, make_teacher


@pytest.fixture(scope="module")
def teacher():
    return make_teacher()


@pytest.fixture(scope="module")
def context():
    return torch.randint(3, VOCAB, (4, HORIZON), generator=torch.Generator().manual_seed(1))
