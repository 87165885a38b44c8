"""cache_codes_multigpu.py on CPU with a tiny model: exact codes, bad files, length order, crash + resume."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from helpers_cache import REPO, TINY_CONFIG, encode_single, load_script, save_tiny_model, write_audio
from snac import SNAC
from snac.cache import CodeCache, list_shards
from snac.cache.encode import BatchEncoder, LengthBuckets, LoadedItem, padded_length, sort_by_length
from snac.cache.run import _Progress

cli = load_script("cache_codes_multigpu.py")
TARGET = 48000


def shard_table(cache: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(s) for s in list_shards(cache))


def run_cli(*args: str) -> int:
    return cli.main([str(a) for a in args])


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """A tiny model, a folder of good and bad files, and one 2-worker cache of it."""
    root = tmp_path_factory.mktemp("zoo")
    model_dir = save_tiny_model(root / "model")
    audio = root / "audio"
    good = {
        # three lengths that pad to the same 20480 samples at 24 kHz: batched together
        "same/a.wav": (20000 / 24000, 24000, 1), "same/b.wav": (20100 / 24000, 24000, 1),
        "same/c.wav": (20470 / 24000, 24000, 1),
        "stereo48k.flac": (1.3, 48000, 2), "narrow8k.wav": (1.1, 8000, 1), "wide96k.wav": (0.7, 96000, 1),
        "odd44k.ogg": (0.9, 44100, 1), "sub/deep/long.wav": (25.0, 24000, 1),
        "short.wav": (0.001, 48000, 1), "one_sample.wav": (1 / 16000, 16000, 1),
    }
    for i, (rel, (sec, sr, ch)) in enumerate(good.items()):
        write_audio(audio / rel, sec, sr, ch, seed=i)
    write_audio(audio / "silent.wav", 1.0, 48000, silent=True)
    good["silent.wav"] = (1.0, 48000, 1)
    bad = {"corrupt.wav": b"RIFF\x10\x00\x00\x00WAVEfmt garbage", "empty.flac": b"",
           "text.mp3": b"this is not audio\n" * 10}
    for rel, data in bad.items():
        (audio / rel).write_bytes(data)
    nan = np.full((1000, 1), np.nan, dtype=np.float32)
    import soundfile as sf
    sf.write(audio / "nan.wav", nan, 24000, subtype="FLOAT")
    write_audio(audio / "too_long.wav", 70.0, 8000)
    (audio / "notes.txt").write_text("not an audio extension: ignored\n")
    cache = root / "cache"
    rc = run_cli("--input_dir", audio, "--output_dir", cache, "--pretrained_model", model_dir,
                 "--devices", "cpu", "--workers_per_device", 2, "--shard_rows", 3,
                 "--batch_seconds", 30, "--max_seconds", 60)
    return dict(root=root, model_dir=model_dir, audio=audio, cache=cache, rc=rc, good=good,
                bad=set(bad) | {"nan.wav", "too_long.wav"})


def test_run_succeeds_and_manifest_records_everything(zoo):
    assert zoo["rc"] == 0
    m = json.loads((zoo["cache"] / "manifest.json").read_text())
    model = SNAC.from_pretrained(zoo["model_dir"])
    assert m["model_config"] == model.config
    assert m["hop_length"] == model.hop_length and m["vq_strides"] == model.vq_strides
    assert m["model_sample_rate"] == 24000 and m["target_sample_rate"] == TARGET
    assert m["input_root"] == str(zoo["audio"]) and m["embed_audio"] is False
    assert m["rows"] == len(zoo["good"]) and m["complete"] and m["missing"] == 0 and m["duplicates"] == 0
    assert sum(s["rows"] for s in m["shards"]) == m["rows"] == shard_table(zoo["cache"]).num_rows
    expected_hours = sum(sec for sec, _, _ in zoo["good"].values()) / 3600
    assert math.isclose(m["hours"], expected_hours, rel_tol=1e-3)
    # files whose native rate is below the 48 kHz target are counted as upsampled
    assert m["upsampled"] == sum(sr < TARGET for _, sr, _ in zoo["good"].values())
    assert {"format_version", "created", "shards", "rejected"} <= set(m)


def test_bad_files_are_rejected_with_reasons_and_the_rest_cached(zoo):
    m = json.loads((zoo["cache"] / "manifest.json").read_text())
    rejected = {r["path"]: r["reason"] for r in m["rejected"]}
    assert set(rejected) == zoo["bad"]
    assert "NaN" in rejected["nan.wav"] and "--max_seconds" in rejected["too_long.wav"]
    assert all(reason and "\n" not in reason for reason in rejected.values())
    t = shard_table(zoo["cache"])
    assert sorted(t["path"].to_pylist()) == sorted(zoo["good"])
    assert len(set(t["id"].to_pylist())) == t.num_rows


def test_lengths_per_scale_and_target_samples(zoo):
    t = shard_table(zoo["cache"]).to_pylist()
    strides = TINY_CONFIG["vq_strides"]
    pad = SNAC(**TINY_CONFIG).pad_multiple
    for row in t:
        sec, sr, ch = zoo["good"][row["path"]]
        frames = max(1, int(round(sec * sr)))
        assert row["sample_rate"] == sr and row["channels"] == ch
        assert row["num_samples"] == math.ceil(frames * TARGET / sr)
        spans = {len(row[f"codes_{j}"]) * s for j, s in enumerate(strides)}
        assert len(spans) == 1  # len_i x stride_i equal across scales
        model_len = math.ceil(frames * 24000 / sr)
        assert row["num_coarse"] == len(row["codes_0"]) == padded_length(model_len, pad) // pad


def test_codes_equal_single_file_encoding(zoo):
    """Reference built without load_item: soundfile -> numpy channel mean -> resample -> model.encode."""
    import soundfile as sf

    from snac.audio import resample

    model = SNAC.from_pretrained(zoo["model_dir"])
    rows = shard_table(zoo["cache"]).to_pylist()
    assert {r["path"] for r in rows} == set(zoo["good"])  # every good file compared, none rejected
    for row in rows:
        data, sr = sf.read(zoo["audio"] / row["path"], dtype="float32", always_2d=True)  # (frames, ch)
        mono = data.mean(axis=1, dtype=np.float32)  # the mix of every channel, not channel 0
        reference = encode_single(model, resample(mono, sr, 24000))
        for j, ref in enumerate(reference):
            assert torch.equal(torch.tensor(row[f"codes_{j}"], dtype=torch.int64), torch.from_numpy(ref)), \
                (row["path"], j)


def test_shards_use_plain_arrow_types(zoo):
    schema = pq.read_schema(list_shards(zoo["cache"])[0])
    plain = (pa.types.is_string, pa.types.is_integer, pa.types.is_floating, pa.types.is_binary)
    for field in schema:
        t = field.type.value_type if pa.types.is_list(field.type) else field.type
        assert any(ok(t) for ok in plain), field
    assert pa.types.is_list(schema.field("codes_0").type)


def test_equal_padded_lengths_are_batched_together(tmp_path):
    model = SNAC(**TINY_CONFIG).eval()
    pad = model.pad_multiple
    items = [LoadedItem(f"f{n}", f"f{n}", torch.randn(n) * 0.1, n / 24000, 2 * n, 24000, 1, None)
             for n in (20000, 3000, 20100, 20470, 5000, 9000)]
    buckets = LengthBuckets(pad, batch_samples=3 * 20480, max_pending_samples=10 ** 9)
    batches = [b for it in items for b in buckets.add(it)] + buckets.flush()
    assert sorted(len(b) for b in batches) == [1, 1, 1, 3]
    for b in batches:
        assert len({padded_length(it.audio.shape[-1], pad) for it in b}) == 1
    encoded = BatchEncoder(model, "cpu", pad, TINY_CONFIG["codebook_size"])
    for b in batches:
        for it, codes in zip(b, encoded.encode(b)):
            for c, ref in zip(codes, encode_single(model, it.audio)):
                assert torch.equal(torch.from_numpy(c.astype(np.int64)), torch.from_numpy(ref))


def test_pending_audio_is_bounded():
    pad = 2048
    buckets = LengthBuckets(pad, batch_samples=10 * pad, max_pending_samples=20 * pad)
    emitted = 0
    for k in range(1, 60):  # all different padded lengths: no bucket ever fills
        item = LoadedItem("p", "p", torch.zeros((k % 15 + 1) * pad), 0.0, 0, 24000, 1, None)
        emitted += sum(len(b) for b in buckets.add(item))
        assert buckets.pending <= 20 * pad
    assert emitted + sum(len(b) for b in buckets.flush()) == 59


def test_sorted_input_fills_batches_and_holds_one_bucket():
    pad, batch = 2048, 24 * 2048
    # lengths in 8 padded sizes, interleaved as a path-sorted list mixes them
    lengths = [pad * (k % 8 + 1) - 100 for k in range(60)]
    items = [LoadedItem(f"f{k}", f"f{k}", torch.zeros(n), n / 24000, 0, 24000, 1, None) for k, n in enumerate(lengths)]
    mean_fill = {}
    for order, sort in (("list", False), ("sorted", True)):
        todo = sort_by_length(items, [it.duration for it in items]) if sort else items
        buckets = LengthBuckets(pad, batch_samples=batch, max_pending_samples=batch, sorted_input=sort)
        batches = []
        for it in todo:
            batches += buckets.add(it)
            assert buckets.pending <= batch and (len(buckets.buckets) == 1 or not sort)  # sorted: one bucket
        batches += buckets.flush()
        assert sorted(it.path for b in batches for it in b) == sorted(it.path for it in items)
        assert all(len({padded_length(it.audio.shape[-1], pad) for it in b}) == 1 for b in batches)
        mean_fill[order] = np.mean([buckets.fill(b) for b in batches])
    assert mean_fill["list"] < 0.35 and mean_fill["sorted"] > 0.7
    # fill: real samples over the batch's capacity, or over its padded size for one longer item
    buckets = LengthBuckets(pad, batch_samples=batch, max_pending_samples=batch)
    assert buckets.fill(items[:1]) == (pad - 100) / batch
    long = LoadedItem("l", "l", torch.zeros(30 * pad - 7), 1.0, 0, 24000, 1, None)
    assert buckets.fill([long]) == (30 * pad - 7) / (30 * pad)
    # unreadable headers (None) first; equal lengths keep their given order
    assert sort_by_length(["a", "b", "c", "d"], [2.0, None, 1.0, 1.0]) == ["b", "c", "d", "a"]


def test_progress_eta_follows_audio_once_every_header_is_known():
    p = _Progress(total_files=4, log_every=1e9)
    p.update({"planned_files": 4, "planned_seconds": 100.0})
    # shortest first: half the files are done but only a tenth of the audio
    p.update({"files": 2, "seconds": 10.0, "planned_done": 10.0, "batches": 2, "batch_fill_sum": 1.5})
    p.start = time.monotonic() - 100.0
    line = p.line()
    assert "2/4 files (50.0%)" in line and "(10.0%)" in line and "batch fill 75%" in line
    assert "ETA 0:15:00" in line  # 100 s for 10% of the audio: 900 s to go, not 100 s


def test_out_of_memory_batch_is_retried_smaller():
    torch.manual_seed(0)
    model = SNAC(**TINY_CONFIG).eval()
    calls = []

    class FlakyModel:  # raises the CUDA OOM error for any batch larger than 2
        def encode(self, x):
            calls.append(x.shape[0])
            if x.shape[0] > 2:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return model.encode(x)

    # distinct seeded signals (a tone per item + noise): every item has its own codes, so halves
    # put back in the wrong order after the split cannot pass
    t = torch.arange(8000) / 24000
    items = [LoadedItem(f"f{i}", f"f{i}", 0.3 * torch.sin(2 * torch.pi * (150 + 240 * i) * t)
                        + 0.05 * torch.randn(8000, generator=torch.Generator().manual_seed(i)),
                        1 / 3, 16000, 24000, 1, None) for i in range(5)]
    enc = BatchEncoder(FlakyModel(), "cpu", model.pad_multiple, TINY_CONFIG["codebook_size"])
    out = enc.encode(items)
    assert enc.oom_retries >= 1 and max(calls) == 5 and calls.count(5) == 1
    assert len({tuple(codes[-1].tolist()) for codes in out}) == len(items)
    for it, codes in zip(items, out):
        for c, ref in zip(codes, encode_single(model, it.audio)):
            assert np.array_equal(c.astype(np.int64), ref)


def _assert_complete(cache: Path, expected_paths: set[str]) -> None:
    paths = shard_table(cache)["path"].to_pylist()
    assert len(paths) == len(set(paths)), "duplicate rows"
    assert set(paths) == expected_paths, "missing rows"
    m = json.loads((cache / "manifest.json").read_text())
    assert m["complete"] and m["rows"] == len(expected_paths) and m["duplicates"] == 0 and m["missing"] == 0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    model_dir = save_tiny_model(root / "model")
    files = set()
    for i in range(14):
        rel = f"spk{i % 3}/utt{i:02d}.wav"
        write_audio(root / "audio" / rel, 0.2 + 0.05 * i, [16000, 24000, 48000][i % 3], seed=i)
        files.add(rel)
    return dict(root=root, model_dir=model_dir, audio=root / "audio", files=files)


@pytest.mark.parametrize("resume_flags", [[], ["--no-sort_by_length"]], ids=["sorted", "resumed_in_list_order"])
def test_resume_after_a_worker_dies_mid_run(corpus, tmp_path, resume_flags):
    cache = tmp_path / "cache"
    common = ["--input_dir", corpus["audio"], "--output_dir", cache, "--pretrained_model", corpus["model_dir"],
              "--devices", "cpu", "--workers_per_device", 2, "--shard_rows", 2, "--batch_seconds", 1]
    # worker 0 exits hard right after its first shard: non-zero status, its shard is kept
    assert run_cli(*common, "--_crash_after_shards", 1) != 0
    m = json.loads((cache / "manifest.json").read_text())
    assert not m["complete"] and m["failed_workers"] == [0] and 0 < m["rows"] < len(corpus["files"])
    kept = set(shard_table(cache)["path"].to_pylist())
    assert run_cli(*common, *resume_flags) == 0
    _assert_complete(cache, corpus["files"])
    assert kept <= set(shard_table(cache)["path"].to_pylist())


def test_sorted_order_caches_the_same_rows_as_list_order(corpus, tmp_path, capsys):
    """Shortest-first caching changes only the order rows are written in: the rows (codes and
    all), and the reader's path-ordered view of them, equal a list-order run's."""
    runs = {}
    for order, flags in (("sorted", []), ("list", ["--no-sort_by_length", "--tf32"])):
        cache = tmp_path / order
        assert run_cli("--input_dir", corpus["audio"], "--output_dir", cache, "--pretrained_model",
                       corpus["model_dir"], "--devices", "cpu", "--shard_rows", 100, "--batch_seconds", 2, *flags) == 0
        _assert_complete(cache, corpus["files"])
        m = json.loads((cache / "manifest.json").read_text())["last_run"]
        assert m["sort_by_length"] == (order == "sorted") and 0 < m["mean_batch_fill"] <= 1 and m["batches"] > 1
        assert m["tf32"] == [order == "list"]  # what the worker's encoder ran with (no effect on a CPU)
        assert "encoder batches, mean fill" in capsys.readouterr().out
        runs[order] = (shard_table(cache).to_pylist(), CodeCache(cache, TINY_CONFIG))
    (sorted_rows, sorted_cache), (list_rows, list_cache) = runs["sorted"], runs["list"]
    # one worker, one shard: the sorted run wrote shortest first, the list run did not
    durations = [r["duration"] for r in sorted_rows]
    assert durations == sorted(durations) and [r["path"] for r in list_rows] != [r["path"] for r in sorted_rows]
    assert sorted(sorted_rows, key=lambda r: r["id"]) == sorted(list_rows, key=lambda r: r["id"])
    assert len(sorted_cache) == len(list_cache) == len(corpus["files"])
    for i in range(len(sorted_cache)):
        assert sorted_cache.path(i) == list_cache.path(i) and sorted_cache.row_id(i) == list_cache.row_id(i)
        for a, b in zip(sorted_cache.codes(i), list_cache.codes(i)):
            assert np.array_equal(a, b)


@pytest.mark.slow
def test_resume_after_the_whole_run_is_killed(corpus, tmp_path):
    cache = tmp_path / "cache"
    cmd = [sys.executable, str(REPO / "cache_codes_multigpu.py"), "--input_dir", str(corpus["audio"]),
           "--output_dir", str(cache), "--pretrained_model", str(corpus["model_dir"]), "--devices", "cpu",
           "--shard_rows", "1", "--batch_seconds", "0.1"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list_shards(cache) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # the launcher; its worker exits when it sees the launcher gone
    proc.wait()
    time.sleep(0.5)
    # the kill landed mid-run: some shards exist, no complete manifest, files left to do
    manifest = cache / "manifest.json"
    assert list_shards(cache), "killed before any shard: the test proves nothing"
    assert not manifest.exists() or not json.loads(manifest.read_text())["complete"]
    assert len(shard_table(cache)) < len(corpus["files"]), "the run finished before the kill"
    assert run_cli(*cmd[2:]) == 0
    _assert_complete(cache, corpus["files"])


def test_limit_rerun_refusal_and_overwrite(corpus, tmp_path, capsys):
    cache = tmp_path / "cache"
    common = ["--input_dir", corpus["audio"], "--output_dir", cache, "--pretrained_model", corpus["model_dir"],
              "--devices", "cpu", "--shard_rows", 4]
    assert run_cli(*common, "--limit", 5) == 0
    first = sorted(corpus["files"])[:5]
    _assert_complete(cache, set(first))
    # a rerun of a finished cache has nothing to do and changes nothing
    shards = [(p.name, p.stat().st_mtime_ns) for p in list_shards(cache)]
    assert run_cli(*common, "--limit", 5) == 0
    assert [(p.name, p.stat().st_mtime_ns) for p in list_shards(cache)] == shards
    # another (valid) target rate into the same folder is refused without --overwrite
    capsys.readouterr()
    assert run_cli(*common, "--target_sample_rate", 72000) == 2
    assert "holds a cache made with different target_sample_rate (target_sample_rate=48000)" \
        in capsys.readouterr().err  # same model and weights: only the settings check can fire
    (cache / "keep_me.txt").write_text("not ours")
    assert run_cli(*common, "--overwrite", "--limit", 3) == 0
    _assert_complete(cache, set(first[:3]))
    assert (cache / "keep_me.txt").exists()


def test_file_list_paths_and_row_ids(tmp_path):
    from snac.cache.encode import make_row_ids, read_file_list

    (tmp_path / "data" / "a").mkdir(parents=True)
    listing = tmp_path / "data" / "list.txt"
    listing.write_text(f"# comment\na/x.wav\n\n{tmp_path / 'data' / 'a' / 'y.flac'}\na/x.wav\n")
    root, files = read_file_list(listing)
    assert root == str(tmp_path / "data" / "a") and files == ["x.wav", "y.flac"]
    root, files = read_file_list(listing, tmp_path / "data")
    assert root == str(tmp_path / "data") and files == ["a/x.wav", "a/y.flac"]
    with pytest.raises(ValueError, match="outside the input root"):
        read_file_list(listing, tmp_path / "data" / "a" / "deeper")
    assert make_row_ids(["s/u1.wav", "s/u2.wav", "s/u2.flac"]) == ["s/u1", "s/u2.wav", "s/u2.flac"]


def test_worker_threads_share_the_node_and_respect_omp_num_threads(monkeypatch):
    """Torch threads per cache worker: this process's CPUs, split over torchrun's local ranks and
    the workers, capped by OMP_NUM_THREADS (oversubscribed threads ran 3-5x slower)."""
    from snac.cache.config import worker_cpus

    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(16)), raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert worker_cpus(2) == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # 8 ranks on the node: 2 CPUs each
    assert worker_cpus(1) == 2 and worker_cpus(4) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert worker_cpus(1) == 1


def _row(i: int):
    item = LoadedItem(path=f"u{i}.wav", row_id=f"u{i}", audio=None, duration=0.1, num_samples=4800,
                      sample_rate=48000, channels=1, flac=None)
    return item, [np.full(n, i, dtype=np.int16) for n in (1, 2, 4)]


def test_background_writer_lets_the_caller_go_on_and_raises_a_failed_write(tmp_path, monkeypatch):
    """The worker's writer thread: ``add`` of a full shard returns while that shard is still being
    written (the encoder does not wait on the disk); ``flush`` returns once it is durable, in order;
    a failed write is raised in the caller's thread by the next call and nothing later is written."""
    import threading

    from snac.cache import writer as writer_mod
    from snac.cache.format import shard_name, shard_schema

    gate, started, real = threading.Event(), threading.Event(), writer_mod.write_parquet_durable

    def slow_write(table, final):
        started.set()
        assert gate.wait(30)
        real(table, final)

    monkeypatch.setattr(writer_mod, "write_parquet_durable", slow_write)
    done = []
    w = writer_mod.ShardWriter(tmp_path, 0, shard_schema(3, 64, False), shard_rows=2, background=True,
                               on_written=lambda name, count: done.append((name, count)))
    for i in range(3):
        w.add(*_row(i))  # the 2nd add hands shard 0 to the thread, which blocks in the write
    assert started.wait(30) and done == [] and w.written == []
    gate.set()
    w.flush()  # writes shard 1 (row 2) after shard 0, and waits for both
    assert w.written == [shard_name(0, 0), shard_name(0, 1)] and done == [(w.written[0], 1), (w.written[1], 2)]
    assert [r["id"] for s in w.written for r in pq.read_table(tmp_path / s).to_pylist()] == ["u0", "u1", "u2"]

    def broken_write(table, final):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer_mod, "write_parquet_durable", broken_write)
    w.add(*_row(3))
    w.add(*_row(4))  # hands a shard to the thread, whose write fails
    with pytest.raises(RuntimeError, match="writing a shard to .* failed: .*No space left on device"):
        w.flush()
    with pytest.raises(RuntimeError, match="No space left"):
        w.add(*_row(5))
    assert [name for name, _ in done] == w.written and len(done) == 2


def test_encoder_runs_in_ieee_fp32_unless_tf32_is_asked_for():
    """torch lets cuDNN run float32 convolutions in TF32 by default; the cache's encoder turns that
    off around each batch (--tf32 turns it back on) and leaves the process's setting as it was,
    also when torch's global precision says TF32."""
    from snac.compiling import conv_precision, conv_tf32

    model = SNAC(**TINY_CONFIG).eval()
    seen = []

    class Recording:
        def encode(self, x):
            seen.append(conv_tf32())
            return model.encode(x)

    items = [LoadedItem("f", "f", 0.1 * torch.randn(4096), 4096 / 24000, 8192, 24000, 1, None)]
    for tf32 in (False, True):
        with conv_precision(not tf32):  # the opposite of what the encoder must see
            BatchEncoder(Recording(), "cpu", model.pad_multiple, TINY_CONFIG["codebook_size"], tf32=tf32).encode(items)
            assert seen[-1] is tf32 and conv_tf32() is (not tf32)
    before = torch.backends.fp32_precision
    try:
        torch.backends.fp32_precision = "tf32"  # the new API's global switch does not reach inside
        BatchEncoder(Recording(), "cpu", model.pad_multiple, TINY_CONFIG["codebook_size"]).encode(items)
        assert seen[-1] is False
    finally:
        torch.backends.fp32_precision = before
    assert cli.build_parser().parse_args(["--output_dir", "x", "--tf32"]).tf32 is True
    assert cli.build_parser().parse_args(["--output_dir", "x"]).tf32 is False


def test_resume_in_another_encoder_precision_is_warned_about(corpus, tmp_path, capsys):
    """The cache records what its encoder ran in (TF32 only on a GPU with --tf32); a resume that
    encodes otherwise carries on (the codes differ at a few %, not in kind) but says so and how to
    match. Here the first run's record is edited to what a GPU run with --tf32 writes."""
    cache = tmp_path / "cache"
    common = ["--input_dir", corpus["audio"], "--output_dir", cache, "--pretrained_model", corpus["model_dir"],
              "--devices", "cpu", "--shard_rows", 100, "--batch_seconds", 2]
    assert run_cli(*common, "--limit", 5) == 0
    settings_path = cache / "cache_settings.json"
    settings = json.loads(settings_path.read_text())
    assert settings["encoder_precision"] == "ieee"
    assert run_cli(*common, "--limit", 7, "--tf32") == 0  # --tf32 has no effect on a CPU: no warning
    assert "warning: this cache's rows" not in capsys.readouterr().out
    settings_path.write_text(json.dumps(dict(settings, encoder_precision="tf32")))
    assert run_cli(*common) == 0
    out = capsys.readouterr().out
    assert "warning: this cache's rows so far were encoded in tf32, this run encodes in ieee" in out
    assert "pass --tf32 to match" in out
    assert json.loads(settings_path.read_text())["encoder_precision"] == "ieee"
    _assert_complete(cache, corpus["files"])
