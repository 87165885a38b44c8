import random
import signal

import numpy as np
import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--reverse", action="store_true",
                     help="run the collected tests in reverse order (to find order dependence)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--reverse"):
        items.reverse()


@pytest.fixture(autouse=True)
def seeded_rngs():
    """Every test starts from the same RNG state (torch, numpy's global RNG, random), so no outcome
    depends on which tests ran before it in the same process."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    yield


@pytest.fixture(autouse=True)
def no_leaked_global_torch_state():
    """A test (or the script main() it calls in-process) must not switch autograd off globally:
    later tests that train in the same process would fail far from the cause."""
    yield
    leaked = not torch.is_grad_enabled()
    torch.set_grad_enabled(True)
    assert not leaked, "autograd was left disabled: use a no_grad context, not set_grad_enabled(False)"


@pytest.fixture
def restore_signal_handlers():
    """For tests whose code installs SIGTERM/SIGINT handlers in this process (quality_check's Stages):
    pytest's own are put back afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)
