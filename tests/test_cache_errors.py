"""Failure paths of a caching run: device/model errors are not bad files, an empty result fails,
the pre-flight writes nothing, OOM retries free the failed attempt (issue 9 items 2, 3, 7; issue 14
items 4, 5; issue 15's cache failure paths)."""

from __future__ import annotations

import gc
import json
import weakref
from pathlib import Path

import pytest
import torch

from helpers_cache import TINY_CONFIG, encode_single, load_script, save_tiny_model, write_audio
from snac import SNAC
from snac.cache import list_shards
from snac.cache.encode import BatchEncoder, FileTooLarge, LoadedItem
from snac.cache.format import LOCK_NAME, model_settings, reject_log, validate_target_sample_rate, weights_fingerprint
from snac.cache.run import WorkerSpec, _acquire_lock, run_worker

cli = load_script("cache_codes_multigpu.py")


def run_cli(*args) -> int:
    return cli.main([str(a) for a in args])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("errors")
    model_dir = save_tiny_model(root / "model", seed=0)
    audio = root / "audio"
    for i in range(3):
        write_audio(audio / f"utt{i}.wav", 0.3, 24000, seed=i)
    return dict(root=root, model=model_dir, audio=audio)


def worker_spec(setup, out: Path, model_dir: Path, fingerprint_of: Path | None = None) -> WorkerSpec:
    model = SNAC.from_pretrained(fingerprint_of or model_dir)
    settings = model_settings(str(model_dir), model.config, 48000, False, str(setup["audio"]),
                              weights_fingerprint(model))
    out.mkdir(parents=True, exist_ok=True)
    return WorkerSpec(worker_index=0, num_workers=1, device="cpu",
                      items=[(f"utt{i}.wav", f"utt{i}") for i in range(3)], input_root=str(setup["audio"]),
                      output_dir=str(out), pretrained_model=str(model_dir), settings=settings, shard_rows=10,
                      batch_seconds=5.0, max_seconds=60.0, torch_threads=1, io_threads=1)


def test_a_device_error_stops_the_worker_and_rejects_no_file(setup, tmp_path):
    class BrokenDevice(torch.nn.Module):  # what a CUDA fault looks like from encode()
        def encode(self, x):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    spec = worker_spec(setup, tmp_path / "cache", setup["model"])
    with pytest.raises(RuntimeError, match="illegal memory access"):
        run_worker(spec, model=BrokenDevice())
    log = reject_log(tmp_path / "cache", 0)
    assert not log.exists() or log.read_text() == ""  # healthy files are not recorded as bad
    assert not list_shards(tmp_path / "cache")


def test_a_model_changed_mid_run_stops_the_worker(setup, tmp_path):
    other = save_tiny_model(tmp_path / "other", seed=5)  # same config, other weights
    spec = worker_spec(setup, tmp_path / "cache", other, fingerprint_of=setup["model"])
    with pytest.raises(RuntimeError, match="changed while caching: weights fingerprint"):
        run_worker(spec)
    assert not list_shards(tmp_path / "cache")


def test_nothing_cached_exits_1_and_a_cache_without_rows_accepts_new_settings(setup, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.wav").write_bytes(b"RIFF garbage")
    (bad / "y.flac").write_bytes(b"")
    cache = tmp_path / "cache"
    capsys.readouterr()
    assert run_cli("--input_dir", bad, "--output_dir", cache, "--pretrained_model", setup["model"],
                   "--devices", "cpu") == 1
    out = capsys.readouterr().out
    assert "NOTHING CACHED" in out and "rejected x.wav" in out and "rejected y.flac" in out
    m = json.loads((cache / "manifest.json").read_text())
    assert m["rows"] == 0 and not m["complete"] and len(m["rejected"]) == 2
    # no rows: another input folder and target rate are accepted (the old rejections are dropped)
    assert run_cli("--input_dir", setup["audio"], "--output_dir", cache, "--pretrained_model", setup["model"],
                   "--devices", "cpu", "--target_sample_rate", 24000) == 0
    m = json.loads((cache / "manifest.json").read_text())
    assert m["complete"] and m["rows"] == 3 and m["target_sample_rate"] == 24000 and m["rejected"] == []


def test_target_rate_rule():
    for ok in (24000, 48000, 72000):
        validate_target_sample_rate(ok, 24000)
    for bad in (44100, 36000, 12000):
        with pytest.raises(ValueError, match=rf"--target_sample_rate {bad} must equal the base rate 24000 "
                                             r"or be a multiple of it \(>= 2x\)"):
            validate_target_sample_rate(bad, 24000)


@pytest.mark.parametrize("flags, message", [
    (["--target_sample_rate", 44100], "--target_sample_rate 44100 must equal the base rate 24000"),
    (["--devices", "7"], "--devices names GPU 7"),
    (["--devices", "gpu0"], "is neither a GPU index nor 'cpu'"),
])
def test_a_failed_preflight_writes_nothing(setup, tmp_path, capsys, flags, message):
    cache = tmp_path / "cache"
    assert run_cli("--input_dir", setup["audio"], "--output_dir", cache, "--pretrained_model", setup["model"],
                   *flags) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not cache.exists()


def test_no_audio_files_is_refused(setup, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no audio here")
    assert run_cli("--input_dir", empty, "--output_dir", tmp_path / "cache", "--pretrained_model",
                   setup["model"], "--devices", "cpu") == 2
    assert "no audio files" in capsys.readouterr().err and not (tmp_path / "cache").exists()


def test_the_run_lock_refuses_a_second_run(setup, tmp_path, capsys):
    cache = tmp_path / "cache"
    cache.mkdir()
    held = _acquire_lock(cache, LOCK_NAME)  # another run holds the directory
    try:
        assert run_cli("--input_dir", setup["audio"], "--output_dir", cache, "--pretrained_model",
                       setup["model"], "--devices", "cpu") == 2
        err = capsys.readouterr().err
        assert "another caching run" in err and "is writing to" in err
        assert not list_shards(cache) and not (cache / "manifest.json").exists()
    finally:
        held.close()


# ---- out-of-memory handling of the batch encoder ----

def tone_items(n: int, samples: int = 6000) -> list[LoadedItem]:
    t = torch.arange(samples) / 24000
    return [LoadedItem(f"f{i}", f"f{i}", 0.3 * torch.sin(2 * torch.pi * (170 + 230 * i) * t), samples / 24000,
                       2 * samples, 24000, 1, None) for i in range(n)]


def test_oom_retry_runs_after_the_failed_attempt_is_freed():
    torch.manual_seed(0)
    model = SNAC(**TINY_CONFIG).eval()
    failed: list[weakref.ref] = []
    alive_at_retry: list[bool] = []

    class OOMOnce:
        def encode(self, x):
            gc.collect()
            alive_at_retry.extend(r() is not None for r in failed)
            if x.shape[0] > 1:
                failed.append(weakref.ref(x))  # the failed batch's input, as a device would hold it
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
            return model.encode(x)

    items = tone_items(2)
    out = BatchEncoder(OOMOnce(), "cpu", model.pad_multiple, TINY_CONFIG["codebook_size"]).encode(items)
    assert failed and alive_at_retry and not any(alive_at_retry)
    for it, codes in zip(items, out):
        for c, ref in zip(codes, encode_single(model, it.audio)):
            assert c.tolist() == ref.tolist()


def test_cpu_fallback_never_copies_the_model_on_the_device():
    torch.manual_seed(0)
    cpu_model = SNAC(**TINY_CONFIG).eval()
    with torch.device("meta"):  # stands in for a full GPU: any copy of it there fails to leave it
        on_device = SNAC(**TINY_CONFIG)

    class FullDevice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = on_device
            self.config = on_device.config

        def encode(self, x):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")

    item = tone_items(1)
    enc = BatchEncoder(FullDevice(), "meta", cpu_model.pad_multiple, TINY_CONFIG["codebook_size"],
                       cpu_model_loader=lambda: cpu_model)
    out = enc.encode(item)
    assert [c.tolist() for c in out[0]] == [r.tolist() for r in encode_single(cpu_model, item[0].audio)]


def test_a_file_too_big_even_for_the_cpu_is_the_files_fault():
    class AlwaysOOM:
        def encode(self, x):
            raise torch.OutOfMemoryError("out of memory")

    enc = BatchEncoder(AlwaysOOM(), "cpu", 2048, TINY_CONFIG["codebook_size"])
    with pytest.raises(FileTooLarge, match="even alone on the CPU; split the file or lower --max_seconds"):
        enc.encode(tone_items(3))
