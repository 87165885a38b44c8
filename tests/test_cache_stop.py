"""A stop request that reaches the cache before its workers run (during the model load or the resume
scan) ends the run with exit 1 and says so, instead of the signal killing it (exit -15) while the
quality check reported that it saved what it had (issue 24, item 13)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

import snac.cache.run as cache_run
from helpers_cache import REPO, save_tiny_model, write_audio
from snac.cache import CacheConfig


@pytest.fixture
def audio_and_model(tmp_path):
    for i in range(3):
        write_audio(tmp_path / "audio" / f"utt{i}.wav", 0.3, 24000, seed=i)
    return tmp_path / "audio", save_tiny_model(tmp_path / "model")


def test_a_stop_before_encoding_is_reported_not_fatal(audio_and_model, tmp_path, monkeypatch, capsys):
    audio, model = audio_and_model
    real = cache_run.validate_target_sample_rate

    def signalled_while_loading(*args):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args)

    monkeypatch.setattr(cache_run, "validate_target_sample_rate", signalled_while_loading)
    before = signal.getsignal(signal.SIGTERM)
    cfg = CacheConfig(input_dir=str(audio), output_dir=str(tmp_path / "cache"), pretrained_model=str(model),
                      devices="cpu")
    assert cache_run.run_caching(cfg) == 1
    assert signal.getsignal(signal.SIGTERM) is before  # the run's handler is put back
    out = capsys.readouterr().out
    assert "stopped by SIGTERM before encoding started: no worker started" in out
    assert "INCOMPLETE: interrupted" in out and "NOTHING CACHED" not in out
    assert json.loads((tmp_path / "cache" / "manifest.json").read_text())["interrupted"] is True


@pytest.mark.slow
def test_a_real_cache_process_signalled_after_startup_exits_1_not_killed(audio_and_model, tmp_path):
    audio, model = audio_and_model
    proc = subprocess.Popen([sys.executable, str(REPO / "cache_codes_multigpu.py"), "--input_dir", str(audio),
                             "--output_dir", str(tmp_path / "cache"), "--pretrained_model", str(model),
                             "--devices", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"))
    for line in proc.stdout:  # the first line comes after the model load: the handler is in place
        if "audio files under" in line:
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.stdout.read()
    assert proc.wait(timeout=120) == 1, rest
    assert "INCOMPLETE: interrupted" in rest


def catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (SigCgt in /proc/PID/status)."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


@pytest.mark.slow
def test_a_real_cache_process_signalled_while_importing_exits_1_not_killed(audio_and_model, tmp_path):
    """SIGTERM as soon as the process catches it: with the script's early handler that is before numpy
    and the cache package are imported (the run's own handler comes seconds later)."""
    audio, model = audio_and_model
    proc = subprocess.Popen([sys.executable, str(REPO / "cache_codes_multigpu.py"), "--input_dir", str(audio),
                             "--output_dir", str(tmp_path / "cache"), "--pretrained_model", str(model),
                             "--devices", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"))
    while not catches(proc.pid, signal.SIGTERM):
        assert proc.poll() is None
    imported = "numpy" in open(f"/proc/{proc.pid}/maps").read()
    proc.send_signal(signal.SIGTERM)
    out = proc.stdout.read()
    assert proc.wait(timeout=120) == 1, out
    assert not imported and "stopped by SIGTERM before encoding started: no worker started" in out
