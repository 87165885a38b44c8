"""torch.compile in the real scripts (trainer, inference, code cache), with its graphs counted, and
the float32 convolution setting they share (``conv_precision``).

Every compiled function goes through a :class:`CompileCounter`: a torch.compile backend that
hands each graph to the real backend (inductor unless told) and reports it, so a log shows how
often a run compiled and for which input shapes. Shapes are left to torch's default (static at
first, dynamic after the first recompile), which bounds the graphs of a run: measured on a tiny
SNAC48 decode, 6 calls over 5 lengths and 3 batch sizes compiled 4 graphs (the first static
one, then dynamic lengths, dynamic batch size, and the 1-frame case torch always specialises).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

BACKENDS = ("inductor", "aot_eager", "eager")  # aot_eager / eager: dynamo's guards and graphs, no codegen
BACKEND_HELP = ("backend of --compile: inductor, or aot_eager / eager (dynamo's graphs without code generation, "
                "to debug recompiles)")


TF32_HELP = ("let cuDNN run float32 convolutions in TF32 (torch's default: faster on Ampere and later "
             "GPUs, but inputs rounded to 10 mantissa bits, which flips codes at near-ties; "
             "benchmarks/bench_model.py --code_flips measures it); default: IEEE float32. No effect on a CPU")


def _conv_flag():
    """cuDNN's conv precision setting of torch >= 2.9 (``fp32_precision``), else None (older torch)."""
    import torch

    conv = getattr(torch.backends.cudnn, "conv", None)
    return conv if conv is not None and hasattr(conv, "fp32_precision") else None


def conv_tf32() -> bool:
    """Whether cuDNN may run float32 convolutions in TF32 now (the setting, resolved as torch does)."""
    import torch

    conv = _conv_flag()
    return conv.fp32_precision == "tf32" if conv is not None else bool(torch.backends.cudnn.allow_tf32)


@contextlib.contextmanager
def conv_precision(tf32: bool) -> Iterator[None]:
    """Inside, cuDNN's float32 convolutions may use TF32 (``tf32``) or run in IEEE float32.

    torch lets them use TF32 by default, so an "fp32" encode on a GPU would not be float32; the
    scripts that make codes (the cache, inference, the evaluation) run in IEEE float32 unless told.
    The setting is process-wide while inside, and restored on the way out. It is torch's conv
    setting (``torch.backends.cudnn.conv.fp32_precision``; ``allow_tf32`` before torch 2.9), so a
    global ``torch.backends.fp32_precision`` cannot override it and the RNN setting is left alone."""
    import torch

    conv = _conv_flag()
    target, flag = (conv, "fp32_precision") if conv is not None else (torch.backends.cudnn, "allow_tf32")
    saved = getattr(target, flag)  # the new API's value as resolved: an inherited one comes back explicit
    setattr(target, flag, ("tf32" if tf32 else "ieee") if conv is not None else tf32)
    try:
        yield
    finally:
        setattr(target, flag, saved)


def check_backend(backend: str) -> str:
    """``backend`` when it is one of :data:`BACKENDS`; else ValueError naming --compile_backend's choices."""
    if backend not in BACKENDS:
        raise ValueError(f"--compile_backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    return backend


class CompileCounter:
    """A torch.compile backend that counts the graphs it compiles and reports each one.

    ``name`` labels the reports (``"decoder"``, ``"encoder"``, ...); ``report`` gets one line per
    graph (default: nothing). ``graphs`` is the count so far."""

    def __init__(self, name: str, backend: str = "inductor", report: Callable[[str], None] | None = None):
        self.name, self.backend_name, self.report = name, check_backend(backend), report
        self.graphs = 0
        self._backend = None
        if backend != "eager":
            import torch._dynamo

            self._backend = torch._dynamo.lookup_backend(backend)

    def __call__(self, gm, example_inputs: list):
        import torch

        self.graphs += 1
        if self.report is not None:
            shapes = [tuple(x.shape) for x in example_inputs if isinstance(x, torch.Tensor) and x.dim() > 0
                      and not isinstance(x, torch.nn.Parameter)]
            self.report(f"torch.compile ({self.name}, {self.backend_name}): graph {self.graphs} compiled"
                        f"{'' if self.graphs == 1 else ' (a recompile)'}; inputs {shapes[:4]}"
                        f"{' ...' if len(shapes) > 4 else ''}")
        return gm.forward if self._backend is None else self._backend(gm, example_inputs)

    def summary(self) -> str:
        return f"torch.compile ({self.name}): {self.graphs} graph(s) compiled"


def compile_fn(fn: Callable, counter: CompileCounter) -> Callable:
    """``torch.compile(fn)`` through ``counter`` (torch's default dynamic-shape policy).

    Random ops (the decoder's noise) are left to torch's own generator (inductor's
    ``fallback_random``), so a seeded decode or training step draws the same noise compiled or not
    and the outputs match eager's; without it inductor draws its own numbers. (Set here, not at
    import: importing inductor costs seconds that the configs importing this module should not.)"""
    import torch
    import torch._inductor.config

    torch._inductor.config.fallback_random = True
    return torch.compile(fn, backend=counter)


def compile_method_(module, method: str, counter: CompileCounter):
    """Replace ``module.<method>`` (e.g. ``decode``, ``encode``) on this instance by its compiled
    version, so every caller of the method (chunked decode, batch encoder) runs compiled."""
    setattr(module, method, compile_fn(getattr(module, method), counter))
    return module
