"""benchmarks/bench_model.py --code_flips: its TF32 emulation rounds as TF32 does, and the table runs."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

from helpers_cache import REPO, load_script

bench = load_script("benchmarks/bench_model.py")


def test_tf32_round_keeps_ten_mantissa_bits_rounding_to_nearest_even():
    one = 1.0
    cases = {one: one, one + 2 ** -10: one + 2 ** -10,            # representable: unchanged
             one + 2 ** -12: one, one + 3 * 2 ** -12: one + 2 ** -10,  # below / above half a step
             one + 2 ** -11: one,                                  # a tie: to the even neighbour
             one + 2 ** -10 + 2 ** -11: one + 2 ** -9, -2.5 - 2 ** -12: -2.5}
    x = torch.tensor(list(cases), dtype=torch.float32)
    assert bench.tf32_round(x).tolist() == list(cases.values())
    y = torch.randn(10000, generator=torch.Generator().manual_seed(0))
    assert ((bench.tf32_round(y) - y).abs() <= y.abs() * 2 ** -11).all()


def test_emulated_tf32_rounds_every_conv1d_and_restores_it():
    real = F.conv1d
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(1, 4, 64, generator=g), torch.randn(3, 4, 5, generator=g)
    with bench.emulated_tf32():
        y = F.conv1d(x, w)
    assert F.conv1d is real
    assert torch.allclose(y, real(bench.tf32_round(x), bench.tf32_round(w)), rtol=0, atol=0)
    assert not torch.equal(y, real(x, w))


@pytest.mark.slow
def test_code_flips_prints_every_mode(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench_model.py", "--code_flips", "--device", "cpu", "--flips_files", "3",
                                      "--flips_model", str(REPO / "models" / "klettres_24khz")])
    bench.main()
    out = capsys.readouterr().out
    for mode in ("tf32 emulated vs IEEE fp32", "bf16 vs IEEE fp32", "fp16 vs IEEE fp32"):
        assert mode in out
    batch = next(line for line in out.splitlines() if line.startswith("batch of 3"))
    assert batch.split("alone")[1].split()[:3] == ["0.000"] * 3  # on a CPU, batched codes equal each file's own


@pytest.mark.slow
def test_gpu_check_fails_without_a_gpu_and_refuses_unknown_steps(tmp_path):
    """tools/gpu_check.sh on this CPU machine: the env and tests steps fail (a skipped GPU test
    must not pass as a GPU check), each step's output is in its log; an unknown step stops it
    before any step runs. A relative OUT_DIR is taken from the caller's folder."""
    import subprocess

    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    script = str(REPO / "tools" / "gpu_check.sh")
    done = subprocess.run(["bash", script, "out", "env", "tests"], capture_output=True, text=True, env=env,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "== env" in done.stdout and "== tests" in done.stdout and "exit 0" not in done.stdout
    assert torch.__version__ in (tmp_path / "out" / "env.log").read_text()
    assert "torch sees no CUDA GPU" in (tmp_path / "out" / "env.log").read_text()
    assert "SNAC48_REQUIRE_GPU=1 but torch sees no CUDA GPU" in (tmp_path / "out" / "tests.log").read_text()
    bad = subprocess.run(["bash", script, str(tmp_path / "out2"), "env", "bogus"], capture_output=True, text=True,
                         env=env, timeout=60)
    assert bad.returncode == 2 and "unknown step bogus" in bad.stdout and "== env" not in bad.stdout
