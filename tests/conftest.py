import pytest
import torch

from tiltlm.models import build_char_tokenizer, build_tiny_llama


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tokenizer():
    return build_char_tokenizer()


@pytest.fixture()
def tiny_model(tokenizer):
    """A random tiny Llama (seeded): cheap enough to build per test."""
    return build_tiny_llama(len(tokenizer), hidden=32, layers=2, heads=2, seed=0)
