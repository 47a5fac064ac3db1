import pytest
import torch


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes seconds (trains, runs the programs, benchmarks, emulates aarch64); "
                                       "make test runs it, make test-fast (-m 'not slow') leaves it out")

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
