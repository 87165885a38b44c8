"""The CUDA paths: decode, encode, the code cache and the trainer on a GPU against the CPU.

Skipped without CUDA (CI has none), unless ``SNAC48_REQUIRE_GPU=1`` (tools/gpu_check.sh sets it):
then a missing GPU is an error. ``SNAC48_GPU_TEST_DEVICE`` picks the GPU (``cuda:N``, default
cuda:0); ``cpu`` runs the same code with the CPU in the GPU's place, to check the tests themselves
on a machine without one (every comparison is then trivially close). Tolerances are for float32 arithmetic reordered by other kernels; each
test prints its measured figure (``pytest -s``) so a run on a new card can be read, not only passed.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from helpers_cache import TINY_CONFIG, load_script, save_tiny_model, write_audio
from helpers_perturb import perturb_parameters_
from helpers_train import one_thread, read_metrics, small_run_data, train_in_process  # noqa: F401
from snac import SNAC, SNAC48
from snac.cache import list_shards
from snac.compiling import conv_precision
from snac.infer import decode_codes, noise_disabled

GPU = os.environ.get("SNAC48_GPU_TEST_DEVICE", "cuda:0")
GPU = "cuda:0" if GPU == "cuda" else GPU
if GPU != "cpu" and not GPU.removeprefix("cuda:").isdigit():
    raise ValueError(f"SNAC48_GPU_TEST_DEVICE must be cuda:N or cpu, got {GPU!r}")
if GPU != "cpu" and not torch.cuda.is_available() and os.environ.get("SNAC48_REQUIRE_GPU") == "1":
    raise RuntimeError("SNAC48_REQUIRE_GPU=1 but torch sees no CUDA GPU (torch " + torch.__version__ + ")")
INDEX = "cpu" if GPU == "cpu" else GPU.removeprefix("cuda:")  # the scripts' --device / --devices form
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (the resume test)
pytestmark = pytest.mark.skipif(GPU != "cpu" and not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (SNAC48_GPU_TEST_DEVICE=cpu dry-runs these on the CPU)")


def snr_db(ref: np.ndarray, other: np.ndarray) -> float:
    err = float(((ref - other) ** 2).sum())
    return math.inf if err == 0 else 10 * math.log10(float((ref ** 2).sum()) / err)


def changed(a: list[torch.Tensor], b: list[torch.Tensor]) -> tuple[int, int]:
    """(codes that differ, codes in all)"""
    return sum(int((x != y).sum()) for x, y in zip(a, b)), sum(x.numel() for x in a)


def near_ties_only(differ: int, total: int) -> bool:
    """Float32 in another order flips a code only at a near-tie: at most 1% of them (or 2)."""
    return differ <= max(2, total // 100)


@pytest.fixture(scope="module")
def tiny48():
    torch.manual_seed(0)
    base = SNAC(**TINY_CONFIG).eval()
    model = perturb_parameters_(SNAC48.from_snac(base), seed=3).eval()
    g = torch.Generator().manual_seed(1)
    audio = 0.1 * torch.randn(2, 1, 40 * base.pad_multiple, generator=g)
    with torch.inference_mode():
        codes = base.encode(audio)
    return base, model, audio, codes


def test_decode_on_the_gpu_matches_the_cpu(tiny48):
    """IEEE float32 on both: the decodes agree to float rounding; bf16 / fp16 autocast on the GPU
    stay close (the inference path, ``decode_codes``)."""
    _, model, _, codes = tiny48
    one = [c[0] for c in codes]
    with noise_disabled(model), conv_precision(tf32=False):
        ref = decode_codes(model, one, chunk_seconds=None, device="cpu")
        gpu = decode_codes(model.to(GPU), one, chunk_seconds=None, device=GPU)
        low = {p: decode_codes(model, one, chunk_seconds=None, device=GPU, precision=p) for p in ("bf16", "fp16")}
    model.to("cpu")
    figures = {"fp32": snr_db(ref, gpu), **{p: snr_db(ref, x) for p, x in low.items()}}
    print(f"\nSNAC48 decode on {GPU} vs CPU, SNR dB: {figures}")
    assert figures["fp32"] > 80 and figures["fp16"] > 40 and figures["bf16"] > 25, figures


def test_encode_on_the_gpu_gives_the_cpu_codes(tiny48):
    """IEEE float32 codes on the GPU equal the CPU's but for rare near-ties, batched or alone."""
    base, _, audio, codes = tiny48
    with torch.inference_mode(), conv_precision(tf32=False):
        gpu = [c.cpu() for c in base.to(GPU).encode(audio.to(GPU))]
        alone = [torch.cat(parts) for parts in zip(*([c.cpu() for c in base.encode(audio[i:i + 1].to(GPU))]
                                                    for i in range(len(audio))))]
    base.to("cpu")
    vs_cpu, vs_alone = changed(codes, gpu), changed(gpu, alone)
    print(f"\ncodes on {GPU}: {vs_cpu[0]} of {vs_cpu[1]} differ from the CPU's, {vs_alone[0]} batched vs alone")
    assert near_ties_only(*vs_cpu) and near_ties_only(*vs_alone), (vs_cpu, vs_alone)


def test_code_cache_on_the_gpu_matches_the_cpu(tmp_path):
    """The whole caching pipeline (pinned host batches, non-blocking copies, the writer thread) on
    the GPU writes the rows a CPU run writes, codes equal but for rare near-ties."""
    cli = load_script("cache_codes_multigpu.py")
    model_dir = save_tiny_model(tmp_path / "model")
    for i in range(8):
        write_audio(tmp_path / "audio" / f"u{i}.wav", 1.0 + 0.3 * i, [16000, 24000, 48000][i % 3], seed=i)
    tables = {}
    for name, devices in (("cpu", "cpu"), ("gpu", INDEX)):
        out = tmp_path / name
        assert cli.main(["--input_dir", str(tmp_path / "audio"), "--output_dir", str(out), "--pretrained_model",
                         str(model_dir), "--devices", devices, "--shard_rows", "3", "--batch_seconds", "2"]) == 0
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.concat_tables(pq.read_table(s) for s in list_shards(out)).sort_by("id")
        tables[name] = table.to_pylist()
        assert json.loads((out / "manifest.json").read_text())["last_run"]["tf32"] == [False]
    cpu, gpu = tables["cpu"], tables["gpu"]
    assert [r["id"] for r in cpu] == [r["id"] for r in gpu]
    keys = [k for k in cpu[0] if k.startswith("codes_")]
    differ = sum(int(np.sum(np.asarray(a[k]) != np.asarray(b[k]))) for a, b in zip(cpu, gpu) for k in keys)
    total = sum(len(a[k]) for a in cpu for k in keys)
    print(f"\ncache on {GPU}: {differ} of {total} codes differ from the CPU run's")
    assert near_ties_only(differ, total)


@pytest.fixture
def deterministic():
    """Deterministic cuDNN and torch kernels (warn where an op has none), as they were after."""
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    yield
    torch.use_deterministic_algorithms(before[0])
    torch.backends.cudnn.deterministic = before[1]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_trainer_on_the_gpu_resumes_to_the_uninterrupted_run(tmp_path, precision, deterministic):
    """A tiny fine-tune on the GPU (warmup, unfreeze, validation): finite losses; cut after step 3
    and resumed, it ends at the uninterrupted run's iteration with its weights (to GPU float
    reordering); in fp32 its validation loss lands near the CPU run's."""
    from snac.train.checkpoint import load_checkpoint

    data = small_run_data(tmp_path, [0.6, 0.9])
    device = INDEX
    runs = {"whole": {}, "cut": {"max_steps": 3}}
    for name, extra in runs.items():
        assert train_in_process(data, tmp_path / name, device=device, precision=precision, **extra) == 0
    assert train_in_process(data, tmp_path / "cut", device=device, precision=precision, resume="auto") == 0
    vals = [m["loss/total"] for m in read_metrics(tmp_path / "whole") if m["type"] == "val"]
    assert vals and all(math.isfinite(v) for v in vals), vals
    whole, cut = (load_checkpoint(tmp_path / n / "latest.pt") for n in ("whole", "cut"))
    assert cut["iteration"] == whole["iteration"] > 3
    # relative to each tensor's scale, floored at 1e-2: zero-initialised tensors hold only ~lr x steps
    worst = max(float((cut["model"][k].float() - v.float()).abs().max() / max(float(v.float().abs().max()), 1e-2))
                for k, v in whole["model"].items() if v.is_floating_point())
    print(f"\n{precision} on {GPU}: val losses {[round(v, 5) for v in vals]}; resumed vs whole, worst "
          f"relative weight difference {worst:.2e}")
    assert worst < 1e-3
    if precision == "fp32":
        assert train_in_process(data, tmp_path / "cpu", device="cpu", precision="fp32") == 0
        cpu_vals = [m["loss/total"] for m in read_metrics(tmp_path / "cpu") if m["type"] == "val"]
        print(f"val loss {GPU} {vals[-1]:.5f} vs cpu {cpu_vals[-1]:.5f}")
        assert vals[-1] == pytest.approx(cpu_vals[-1], rel=0.05)
