"""What a cache may hold: codes of one model's weights only, each listed file once, an index that
survives a copy (issue 9 items 1, 5, 8, 10) and the reader's refusals of damaged caches."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from helpers_cache import TINY_CONFIG, load_script, save_tiny_model, write_audio
from snac import SNAC
from snac.cache import CodeCache, list_shards, write_synthetic_cache
from snac.cache.format import weights_fingerprint

cli = load_script("cache_codes_multigpu.py")


def run_cli(*args) -> int:
    return cli.main([str(a) for a in args])


def shard_paths(cache: Path) -> list[str]:
    return [p for s in list_shards(cache) for p in pq.read_table(s, columns=["path"])["path"].to_pylist()]


def quarantined_paths(cache: Path) -> list[str]:
    return [p for f in sorted((cache / "_quarantine").glob("*.parquet"))
            for p in pq.read_table(f, columns=["path"])["path"].to_pylist()]


def manifest(cache: Path) -> dict:
    return json.loads((cache / "manifest.json").read_text())


def assert_accounting(m: dict) -> None:
    assert m["rows"] == m["listed"] - len(m["rejected"]) - m["missing"]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Two models of one config (other seeds: other weights), 4 files, one finished cache."""
    root = tmp_path_factory.mktemp("integrity")
    model_a, model_b = save_tiny_model(root / "a", seed=0), save_tiny_model(root / "b", seed=1)
    audio = root / "audio"
    for i in range(4):
        write_audio(audio / f"utt{i}.wav", 0.3 + 0.1 * i, 24000, seed=i)
    cache = root / "cache"
    assert run_cli("--input_dir", audio, "--output_dir", cache, "--pretrained_model", model_a,
                   "--devices", "cpu", "--shard_rows", 2) == 0
    return dict(root=root, a=model_a, b=model_b, audio=audio, cache=cache)


def copy_of(made, tmp_path) -> tuple[Path, Path]:
    """A private copy of the finished cache and of its input folder (the manifest's input_root
    is the original folder, so the copy is re-pointed by running with --input_dir = the copy)."""
    audio = tmp_path / "audio"
    shutil.copytree(made["audio"], audio)
    cache = tmp_path / "cache"
    shutil.copytree(made["cache"], cache)
    for name in ("cache_settings.json", "manifest.json"):  # the copy's input root is its own folder
        d = json.loads((cache / name).read_text())
        d["input_root"] = str(audio)
        (cache / name).write_text(json.dumps(d))
    return cache, audio


def test_fingerprint_covers_encoder_and_quantizer_weights_only():
    torch.manual_seed(0)
    model = SNAC(**TINY_CONFIG)
    fp = weights_fingerprint(model)
    assert len(fp) == 64 and fp == weights_fingerprint(model)
    with torch.no_grad():
        model.decoder.model[0].bias.add_(1.0)  # the decoder does not make codes
    assert weights_fingerprint(model) == fp
    with torch.no_grad():
        model.quantizer.quantizers[-1].codebook.weight[0, 0] += 1e-3
    assert weights_fingerprint(model) != fp
    torch.manual_seed(1)
    assert weights_fingerprint(SNAC(**TINY_CONFIG)) != fp


def test_manifest_records_fingerprint_and_resampler(made):
    m = manifest(made["cache"])
    assert m["weights_fingerprint"] == weights_fingerprint(SNAC.from_pretrained(made["a"]))
    assert m["resampler"].startswith("soxr-HQ ")
    assert m["complete"] and m["rows"] == 4
    assert_accounting(m)


def test_rerun_with_other_weights_is_refused(made, tmp_path, capsys):
    cache, audio = copy_of(made, tmp_path)
    before = shard_paths(cache)
    common = ["--input_dir", audio, "--output_dir", cache, "--devices", "cpu"]
    capsys.readouterr()
    assert run_cli(*common, "--pretrained_model", made["b"]) == 2
    err = capsys.readouterr().err.strip()
    fp_a = weights_fingerprint(SNAC.from_pretrained(made["a"]))
    fp_b = weights_fingerprint(SNAC.from_pretrained(made["b"]))
    assert len(err.splitlines()) == 1 and fp_a in err and fp_b in err
    assert "--overwrite" in err and "--output_dir" in err
    assert shard_paths(cache) == before and manifest(cache)["weights_fingerprint"] == fp_a
    # --overwrite starts over with the new weights
    assert run_cli(*common, "--pretrained_model", made["b"], "--overwrite") == 0
    assert manifest(cache)["weights_fingerprint"] == fp_b and sorted(shard_paths(cache)) == sorted(before)


def test_reader_compares_the_expected_models_weights(made):
    model_a, model_b = SNAC.from_pretrained(made["a"]), SNAC.from_pretrained(made["b"])
    assert len(CodeCache(made["cache"], expected_model=model_a)) == 4
    assert len(CodeCache(made["cache"], expected_model_config=model_b.config)) == 4  # config only
    with pytest.raises(ValueError, match="other weights") as e:
        CodeCache(made["cache"], expected_model=model_b)
    assert weights_fingerprint(model_b) in str(e.value)


def test_rows_of_files_no_longer_listed_are_quarantined(made, tmp_path, capsys):
    cache, audio = copy_of(made, tmp_path)
    (audio / "utt1.wav").unlink()
    capsys.readouterr()
    assert run_cli("--input_dir", audio, "--output_dir", cache, "--pretrained_model", made["a"],
                   "--devices", "cpu") == 0
    out = capsys.readouterr().out
    assert sorted(shard_paths(cache)) == ["utt0.wav", "utt2.wav", "utt3.wav"]
    assert quarantined_paths(cache) == ["utt1.wav"]  # set aside, not deleted
    assert "moved 1 rows of files no longer listed" in out and "_quarantine" in out
    m = manifest(cache)
    assert [(q["rows"], q["reason"]) for q in m["quarantined"]] == [(1, "stale")]
    assert (cache / m["quarantined"][0]["file"]).is_file()
    assert m["complete"] and m["rows"] == 3 and m["listed"] == 3
    assert_accounting(m)
    assert len(CodeCache(cache)) == 3


def test_duplicate_rows_are_quarantined_and_the_run_finishes(made, tmp_path, capsys):
    cache, audio = copy_of(made, tmp_path)
    first = list_shards(cache)[0]
    dup_rows = pq.read_table(first, columns=["path"])["path"].to_pylist()
    shutil.copy(first, cache / "shard-w00099-000000.parquet")  # the same rows in a second shard
    capsys.readouterr()
    assert run_cli("--input_dir", audio, "--output_dir", cache, "--pretrained_model", made["a"],
                   "--devices", "cpu") == 0
    assert f"moved {len(dup_rows)} rows already cached in an earlier shard" in capsys.readouterr().out
    paths = shard_paths(cache)
    assert sorted(paths) == [f"utt{i}.wav" for i in range(4)]  # each once
    assert sorted(quarantined_paths(cache)) == sorted(dup_rows)
    m = manifest(cache)
    assert m["complete"] and m["duplicates"] == 0
    assert_accounting(m)


@pytest.fixture
def synthetic(tmp_path):
    d = tmp_path / "syn"
    write_synthetic_cache(d, 40, TINY_CONFIG, rows_per_shard=15, max_coarse=6, seed=3)
    return d


def snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(d.rglob("*"))}


def test_a_copied_cache_keeps_its_index_and_opens_read_only_without_writing(synthetic, tmp_path, monkeypatch):
    first = CodeCache(synthetic)  # builds the index
    copy = tmp_path / "copy"
    shutil.copytree(synthetic, copy, copy_function=shutil.copyfile)  # new modification times
    for p in copy.rglob("*"):
        os.utime(p, ns=(10 ** 9, 10 ** 9))
    before = snapshot(copy)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if mode & os.W_OK else real_access(p, mode))
    cache = CodeCache(copy)
    assert cache.index_dir.name == first.index_dir.name
    assert snapshot(copy) == before
    assert [c.tolist() for c in cache.codes(7)] == [c.tolist() for c in first.codes(7)]


def test_read_only_cache_without_an_index_names_the_fix(synthetic, monkeypatch):
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if mode & os.W_OK else real_access(p, mode))
    with pytest.raises(PermissionError, match=r"read-only; build one where it is writable: python -m snac.cache"):
        CodeCache(synthetic)
    assert not list(synthetic.glob("index-*"))


def test_format_version_mismatch_is_refused(synthetic):
    m = json.loads((synthetic / "manifest.json").read_text())
    m["format_version"] = 99
    (synthetic / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="has cache format 99, this code reads 1; re-make the cache"):
        CodeCache(synthetic)


def test_duplicate_rows_are_refused_by_the_reader(synthetic):
    shard = list_shards(synthetic)[0]
    shutil.copy(shard, synthetic / "shard-w00099-000000.parquet")
    with pytest.raises(ValueError, match="is cached more than once"):
        CodeCache(synthetic)


def test_wrong_code_lengths_in_a_shard_are_refused(synthetic):
    shard = list_shards(synthetic)[1]
    t = pq.read_table(shard)
    codes = t["codes_1"].to_pylist()
    codes[2] = codes[2][:-1]  # one token short of num_coarse x 2
    t = t.set_column(t.schema.get_field_index("codes_1"), t.schema.field("codes_1"),
                     pa.array(codes, t.schema.field("codes_1").type))
    pq.write_table(t, shard)
    with pytest.raises(ValueError, match=rf"{shard.name}: codes_1 lengths are not num_coarse x 2; the shard is damaged"):
        CodeCache(synthetic)


def test_index_digest_sees_a_same_size_rewrite_of_a_shard_and_ignores_times(tmp_path):
    """A shard rewritten in place with other content of the same size (the footer's offsets and
    statistics change) names another index; a new modification time alone does not."""
    from snac.cache.index import shard_digest

    manifest = {"model_config": TINY_CONFIG, "embed_audio": False}
    shard = tmp_path / "shard-w000-00000.parquet"
    data = bytearray(os.urandom(100_000))
    shard.write_bytes(bytes(data))
    first = shard_digest([shard], manifest)
    os.utime(shard, (1, 1))
    assert shard_digest([shard], manifest) == first  # times do not count
    data[-100] ^= 0xFF  # same size, one byte of the footer region changed
    shard.write_bytes(bytes(data))
    assert shard_digest([shard], manifest) != first
