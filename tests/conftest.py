import pytest
import torch


@pytest.fixture(autouse=True)
def no_leaked_global_torch_state():
    """A test (or the script main() it calls in-process) must not switch autograd off globally:
    later tests that train in the same process would fail far from the cause."""
    yield
    leaked = not torch.is_grad_enabled()
    torch.set_grad_enabled(True)
    assert not leaked, "autograd was left disabled: use a no_grad context, not set_grad_enabled(False)"
