import pytest
import torch

from dind.config import ModelConfig


@pytest.fixture
def tiny_cfg() -> ModelConfig:
    """A 2-layer, width-32 model: small enough for exhaustive CPU tests."""
    return ModelConfig(
        vocab_size=33,
        mask_id=32,
        seq_len=16,
        hidden_dim=32,
        cond_dim=16,
        n_blocks=2,
        n_heads=2,
        dropout=0.0,
    )


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """For tests of thousands of tiny forwards: intra-op threads only add wake-up latency."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """DIND_CACHE in the test's own folder: nothing read from or written to the real cache."""
    monkeypatch.setenv("DIND_CACHE", str(tmp_path / "cache"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
