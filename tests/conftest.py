import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

FAMILIES = ("sd", "sd2", "sdxl")


@pytest.fixture(scope="session")
def tiny_pipes():
    """One tiny pipeline per family, built once; tests must leave them as they found them."""
    from erasekit.models.tiny import build_tiny_pipeline

    return {fam: build_tiny_pipeline(fam, seed=0) for fam in FAMILIES}


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture
def pipe(tiny_pipes, family):
    p = tiny_pipes[family]
    before = {k: v.clone() for k, v in p.unet.state_dict().items()}
    yield p
    # Guard: a test that forgot to revert would poison the others.
    after = p.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "test left the shared pipeline modified"
