"""Move every parameter of a fixture model away from its initial value.

A freshly built model sits at special values (Snake alphas all 1, zero biases, unit weight-norm
magnitudes, identity-like layers). A copy that is skipped, or a layer that ignores its parameter,
then goes unseen because the fallback value is the same one. Perturbed, every tensor differs from
its init and from every other model's, so a test comparing two models catches a skipped copy.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def perturb_parameters_(model: nn.Module, seed: int, relative: float = 0.2, absolute: float = 0.02) -> nn.Module:
    """In place: p <- p * (1 + relative * u) + absolute * n, u ~ U(-1, 1), n ~ N(0, 1), seeded.

    Multiplicative so scales are kept (Snake alphas stay within 1 +- 0.2, positive); additive so
    zeros move off zero. Returns the model. Raises if a parameter did not change.
    """
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        before = p.detach().clone()
        u = torch.rand(p.shape, generator=gen, dtype=torch.float64) * 2 - 1
        n = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        p.copy_((p.double() * (1 + relative * u) + absolute * n).to(p.dtype))
        if torch.equal(p, before):
            raise AssertionError(f"perturbing {name} left it unchanged")
    return model
