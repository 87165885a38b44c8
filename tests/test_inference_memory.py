"""inference.py reads, downmixes and resamples a file in blocks: peak host memory is flat in its length.

Measured as the peak resident set (ru_maxrss) of a fresh process decoding a short file and one ten
times longer. The files are 8-channel 96 kHz so that holding one whole would show: the 40 s file is
123 MB as float32 (before streaming the peak grew by ~270 MB from a 6 s to a 60 s file of this
kind), while the streamed decode holds a few blocks. ru_maxrss is a peak, not a timing, so the
measure does not depend on how busy the cores are.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from snac import SNAC, SNAC48
from snac.presets import TINY_24KHZ

pytestmark = pytest.mark.slow  # peak memory of real inference subprocesses

ROOT = Path(__file__).resolve().parents[1]
RATE, CHANNELS = 96000, 8

PEAK_SCRIPT = """
import importlib.util, json, resource, sys
spec = importlib.util.spec_from_file_location("inference_script", sys.argv[1])
inference = importlib.util.module_from_spec(spec)
spec.loader.exec_module(inference)
rc = inference.main(sys.argv[2:])
print(json.dumps({"rc": rc, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _write_noise(path: Path, seconds: int) -> None:
    rng = np.random.default_rng(seconds)
    with sf.SoundFile(str(path), "w", RATE, CHANNELS, "PCM_16") as f:
        for _ in range(seconds):  # written a second at a time: the test itself stays small
            f.write((0.1 * rng.standard_normal((RATE, CHANNELS))).astype(np.float32))


def _peak_mib(checkpoint: Path, audio: Path, out: Path) -> float:
    args = ["--checkpoint", str(checkpoint), "--input", str(audio), "--output", str(out), "--device", "cpu",
            "--chunk_seconds", "1"]
    proc = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(ROOT / "inference.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0
    return result["peak_mib"]


def test_peak_host_memory_is_flat_in_the_file_length(tmp_path):
    torch.manual_seed(0)
    base = SNAC(**TINY_24KHZ)
    base.save_pretrained(tmp_path / "base")
    m48 = SNAC48.from_snac(base)
    m48.save_pretrained(tmp_path / "m48", base=base)
    _write_noise(tmp_path / "short.wav", 4)
    _write_noise(tmp_path / "long.wav", 40)
    short = _peak_mib(tmp_path / "m48", tmp_path / "short.wav", tmp_path / "short_out.wav")
    long = _peak_mib(tmp_path / "m48", tmp_path / "long.wav", tmp_path / "long_out.wav")
    assert sf.info(str(tmp_path / "long_out.wav")).frames == 40 * 48000
    whole_file_mib = 40 * RATE * CHANNELS * 4 / 2**20  # the long file as float32: 117 MiB
    # one whole copy of the long file would add >= 117 MiB; allocator noise is ~20 MiB
    assert long - short < 0.4 * whole_file_mib, (short, long)
