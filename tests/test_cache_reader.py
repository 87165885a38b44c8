"""CodeCache: windows per scale, refusal of foreign caches, the flat index, embedded audio."""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers_cache import TINY_CONFIG, load_script, save_tiny_model, write_audio
from snac.audio import load_audio, resample
import snac.cache.reader as cache_module
from snac.cache import CodeCache, build_index, list_shards, write_synthetic_cache

ROWS = 257


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    d = tmp_path_factory.mktemp("synthetic")
    write_synthetic_cache(d, ROWS, TINY_CONFIG, rows_per_shard=50, max_coarse=9, seed=1)
    table = pa.concat_tables(pq.read_table(s) for s in list_shards(d)).to_pylist()
    return d, {r["path"]: r for r in table}


def test_rows_are_ordered_by_path_and_match_the_shards(synthetic):
    d, rows = synthetic
    cache = CodeCache(d, TINY_CONFIG)
    assert len(cache) == ROWS
    assert [cache.path(i) for i in range(len(cache))] == sorted(rows)
    assert cache.num_coarse.dtype == np.int64 and cache.num_samples.dtype == np.int64
    assert cache.num_codebooks == 3 and cache.vq_strides == [4, 2, 1] and cache.hop_length == 512
    assert cache.model_sample_rate == 24000 and cache.target_sample_rate == 48000
    for i in range(len(cache)):
        row = rows[cache.path(i)]
        assert cache.row_id(i) == row["id"] and cache.duration(i) == row["duration"]
        assert cache.num_coarse[i] == row["num_coarse"] and cache.num_samples[i] == row["num_samples"]
        codes = cache.codes(i)
        assert all(c.dtype == np.int64 for c in codes)
        for j in range(3):
            assert codes[j].tolist() == row[f"codes_{j}"]


@pytest.mark.parametrize("whole_row_bytes", [1 << 16, 0])  # one read per row / one per codebook
def test_windows_are_aligned_across_scales_and_clipped(synthetic, monkeypatch, whole_row_bytes):
    monkeypatch.setattr(cache_module, "_WHOLE_ROW_BYTES", whole_row_bytes)
    d, rows = synthetic
    cache = CodeCache(d)
    i = int(np.argmax(cache.num_coarse))
    n = int(cache.num_coarse[i])
    row = rows[cache.path(i)]
    for start, length in [(0, 2), (1, 3), (n - 2, 5), (n, 4), (n + 3, 1), (2, None), (0, 0)]:
        got = cache.codes(i, start, length)
        end = n if length is None else min(n, start + length)
        s = min(start, n)
        for j, stride in enumerate(cache.vq_strides):
            r = cache.vq_strides[0] // stride  # codebook j: [start*s0/sj, end*s0/sj)
            assert got[j].tolist() == row[f"codes_{j}"][s * r:max(s, end) * r]
        assert len({len(c) * st for c, st in zip(got, cache.vq_strides)}) == 1
    with pytest.raises(IndexError):
        cache.codes(len(cache))


def test_a_pickled_reader_reopens_the_cache(synthetic):
    import pickle

    d, _ = synthetic
    cache = CodeCache(d)
    clone = pickle.loads(pickle.dumps(cache))  # what a spawn-context DataLoader worker receives
    assert len(clone) == len(cache) and clone.path(5) == cache.path(5)
    assert [c.tolist() for c in clone.codes(5)] == [c.tolist() for c in cache.codes(5)]


def test_refuses_codes_of_another_model_config(synthetic):
    d, _ = synthetic
    other = dict(TINY_CONFIG, codebook_size=128)
    with pytest.raises(ValueError) as e:
        CodeCache(d, other)
    msg = str(e.value)
    assert "codebook_size: 64 (cache) vs 128 (expected)" in msg and "synthetic" in msg
    assert "--pretrained_model" in msg  # names the fix
    # a SNAC48 config whose base is the cache's model is accepted; tuples vs lists do not matter
    CodeCache(d, {"base": dict(TINY_CONFIG, vq_strides=(4, 2, 1)), "target_sample_rate": 48000})


def test_one_line_errors_for_missing_or_empty_caches(tmp_path, synthetic):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CodeCache(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        CodeCache(tmp_path / "empty")
    d, _ = synthetic
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(d / "manifest.json", bare / "manifest.json")
    with pytest.raises(ValueError, match="0 rows"):
        CodeCache(bare)


def test_index_is_rebuilt_when_shards_change(tmp_path):
    d = tmp_path / "c"
    write_synthetic_cache(d, 40, TINY_CONFIG, rows_per_shard=10, max_coarse=4)
    first = CodeCache(d).index_dir
    assert CodeCache(d).index_dir == first  # reused, not rebuilt
    removed = list_shards(d)[-1]
    removed_paths = set(pq.read_table(removed, columns=["path"])["path"].to_pylist())
    removed.unlink()
    cache = CodeCache(d)
    assert cache.index_dir != first and not first.exists() and len(cache) == 30
    assert not removed_paths & {cache.path(i) for i in range(len(cache))}
    assert build_index(d) == cache.index_dir


def _read_in_child(args):
    d, rows = args
    cache = _FORKED["cache"]
    return [[c.tolist() for c in cache.codes(i, 1, 2)] for i in rows]


_FORKED: dict = {}


def test_forked_workers_read_the_same_rows(synthetic):
    d, _ = synthetic
    _FORKED["cache"] = CodeCache(d)
    rows = list(range(0, ROWS, 7))
    expected = [[c.tolist() for c in _FORKED["cache"].codes(i, 1, 2)] for i in rows]
    with mp.get_context("fork").Pool(2) as pool:  # like DataLoader workers: the open reader is inherited
        got = pool.map(_read_in_child, [(d, rows)] * 2)
    assert got == [expected, expected]


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed")
    model_dir = save_tiny_model(root / "model")
    specs = {"a/x.wav": (0.6, 16000, 1), "b/y.flac": (1.2, 48000, 2), "c/z.wav": (0.9, 44100, 1)}
    for i, (rel, (sec, sr, ch)) in enumerate(specs.items()):
        write_audio(root / "audio" / rel, sec, sr, ch, seed=i)
    cli = load_script("cache_codes_multigpu.py")
    assert cli.main(["--input_dir", str(root / "audio"), "--output_dir", str(root / "cache"),
                     "--pretrained_model", str(model_dir), "--devices", "cpu", "--embed_audio"]) == 0
    references = {}
    for rel in specs:
        x, sr = load_audio(root / "audio" / rel, mono=True)
        references[rel] = resample(x, sr, 48000)
    return root, references


def test_embedded_audio_round_trip_without_the_source(embedded, tmp_path):
    root, references = embedded
    moved = tmp_path / "moved_cache"
    shutil.copytree(root / "cache", moved)
    shutil.move(root / "audio", tmp_path / "audio_elsewhere")  # the cache must not need the sources
    try:
        cache = CodeCache(moved)
        assert cache.embed_audio and len(cache) == 3
        for i in range(len(cache)):
            ref = references[cache.path(i)]
            full = cache.audio(i)
            assert full.dtype == np.float32 and len(full) == len(ref) == cache.num_samples[i]
            assert np.abs(full - ref).max() < 2 ** -14  # 16-bit FLAC
            window = cache.audio(i, 1000, 4096)
            assert np.array_equal(window, full[1000:5096])
            assert len(cache.audio(i, len(ref) - 10, 4096)) == 10  # shorter at the end
    finally:
        shutil.move(tmp_path / "audio_elsewhere", root / "audio")


def test_audio_from_the_source_files_and_audio_root(embedded, tmp_path):
    root, references = embedded
    manifest = json.loads((root / "cache" / "manifest.json").read_text())
    plain = tmp_path / "plain"
    shutil.copytree(root / "cache", plain, ignore=shutil.ignore_patterns("index-*"))
    manifest["embed_audio"] = False
    (plain / "manifest.json").write_text(json.dumps(manifest))
    cache = CodeCache(plain)
    i = [cache.path(k) for k in range(len(cache))].index("b/y.flac")
    ref = references["b/y.flac"]
    assert np.allclose(cache.audio(i, 4096, 8192), ref[4096:4096 + 8192], atol=1e-5)
    shutil.copytree(root / "audio", tmp_path / "elsewhere")
    moved = CodeCache(plain, audio_root=tmp_path / "elsewhere")
    assert np.allclose(moved.audio(i, 0, 100), ref[:100], atol=1e-5)
    gone = CodeCache(plain, audio_root=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="audio_root"):
        gone.audio(i)
