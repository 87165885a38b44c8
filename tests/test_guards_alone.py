"""Each refusal of the cache reader, the model loader, inference's base check, the export and the
quality check, on an input where only that guard can fire (same weights other config, same config
other weights, ...), with its message (issue 24, item 21). Guards tested elsewhere are listed in
the closing note of issue 24."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from snac import SNAC, SNAC48
from snac.cache import CodeCache
from snac.cache.writer import write_synthetic_cache
from snac.hub import load_weights, resolve_pretrained
from snac.infer import load_codec_pair
from snac.presets import TINY_24KHZ

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("restore_signal_handlers")  # quality_check's Stages
OTHER_CONFIG = dict(TINY_24KHZ, encoder_dim=16)  # same rates, strides and codebooks: only a width differs


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"guard_{Path(name).stem}", ROOT / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("guards")
    torch.manual_seed(0)
    base = SNAC(**TINY_24KHZ)
    base.save_pretrained(root / "base")
    torch.manual_seed(0)
    SNAC(**OTHER_CONFIG).save_pretrained(root / "other_config")
    m48 = SNAC48.from_snac(base)
    m48.save_pretrained(root / "m48")
    return root, base, m48


# ---- the cache reader ----

def test_reader_refuses_a_cache_of_another_config_by_the_config_check(models, tmp_path):
    _, base, _ = models
    write_synthetic_cache(tmp_path / "c", 3, base.config, model=base)
    assert len(CodeCache(tmp_path / "c", expected_model_config=base.config)) == 3  # positive control
    with pytest.raises(ValueError, match=r"was made by model synthetic with a different config \(encoder_dim"):
        CodeCache(tmp_path / "c", expected_model_config=OTHER_CONFIG)


def test_reader_refuses_a_cache_without_rows(models, tmp_path):
    _, base, _ = models
    write_synthetic_cache(tmp_path / "c", 0, base.config, model=base)
    with pytest.raises(ValueError, match="holds 0 rows .*re-run cache_codes_multigpu.py"):
        CodeCache(tmp_path / "c", expected_model=base)  # same config, same weights: only the row count


# ---- loading a model ----

def test_a_model_directory_without_config_or_weights_says_which(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json: a model directory needs config.json"):
        resolve_pretrained(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="has config.json but no weights: expected one of model.safetensors"):
        resolve_pretrained(tmp_path / "empty")
    (tmp_path / "w.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="is a file; pass a model directory"):
        resolve_pretrained(tmp_path / "w.safetensors")


def test_weights_with_pickled_code_or_no_state_dict_are_refused(tmp_path):
    torch.save(argparse.Namespace(x=1), tmp_path / "code.bin")
    with pytest.raises(ValueError, match="refusing to load .*it carries pickled code"):
        load_weights(tmp_path / "code.bin")
    torch.save([torch.zeros(1)], tmp_path / "list.bin")
    with pytest.raises(ValueError, match=r"does not hold a state_dict \(got list\)"):
        load_weights(tmp_path / "list.bin")


# ---- inference's base check (a SNAC48 decodes the codes of its base) ----

def test_inference_refuses_a_48khz_model_as_the_base(models):
    root, _, _ = models
    with pytest.raises(ValueError, match="is a 48 kHz model; pass the 24 kHz base"):
        load_codec_pair(root / "m48", str(root / "m48"), need_encoder=True, need_stock=True)


def test_inference_refuses_a_base_of_another_config(models):
    root, _, _ = models
    assert load_codec_pair(root / "m48", str(root / "base"), True, True)[1] is not None  # positive control
    with pytest.raises(ValueError, match=r"is not the codec this checkpoint decodes \(encoder_dim"):
        load_codec_pair(root / "m48", str(root / "other_config"), need_encoder=True, need_stock=True)


# ---- the export ----

@pytest.fixture
def checkpoint(models, tmp_path):
    _, _, m48 = models
    path = tmp_path / "best_model.pt"
    torch.save({"model": m48.state_dict(), "model_config": m48.config, "config": {}}, path)
    return path


def test_export_without_a_recorded_base_asks_for_base_model(checkpoint, tmp_path):
    with pytest.raises(SystemExit, match="the checkpoint records no --pretrained_model; pass --base_model"):
        _script("scripts/export_pretrained.py").main(["--checkpoint", str(checkpoint), "--output_dir",
                                                      str(tmp_path / "e")])


@pytest.mark.parametrize("base,message", [
    ("m48", r"is not a base SNAC \(a 48 kHz model\?\)"),
    ("other_config", r"is not the codec of this checkpoint \(encoder_dim"),
])
def test_export_refuses_a_base_that_cannot_make_its_codes(models, checkpoint, tmp_path, base, message):
    root, _, _ = models
    with pytest.raises(SystemExit, match=message):
        _script("scripts/export_pretrained.py").main(["--checkpoint", str(checkpoint), "--output_dir",
                                                      str(tmp_path / "e"), "--base_model", str(root / base)])
    assert not (tmp_path / "e").exists()


def test_export_refuses_a_file_that_is_not_a_training_checkpoint(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "x.pt")
    with pytest.raises(SystemExit, match="is not a checkpoint of finetune_decoder_48khz.py"):
        _script("scripts/export_pretrained.py").main(["--checkpoint", str(tmp_path / "x.pt"), "--output_dir",
                                                      str(tmp_path / "e")])


# ---- the quality check ----

@pytest.fixture
def folders(tmp_path):
    for name in ("train", "val"):
        (tmp_path / name).mkdir()
    return ["--train_dir", str(tmp_path / "train"), "--val_dir", str(tmp_path / "val")]


@pytest.mark.parametrize("flags,message", [
    (["--epochs", "1"], "--epochs >= 2"),
    (["--codes_from", "nowhere"], "--codes_from nowhere holds no finished cache/train and cache/val"),
])
def test_quality_check_flags_are_refused_by_the_parser(folders, capsys, flags, message):
    with pytest.raises(SystemExit):
        _script("scripts/quality_check.py").parse_args([*folders, *flags])
    assert message in capsys.readouterr().err


def test_quality_check_refuses_a_folder_of_other_files(folders, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.tex").write_text("x")
    for extra in ([], ["--overwrite"]):
        with pytest.raises(SystemExit, match="is not a quality-check folder .*pass another --output_dir"):
            _script("scripts/quality_check.py").main([*folders, "--output_dir", str(tmp_path / "out"), *extra])
    assert (tmp_path / "out" / "thesis.tex").is_file()


def test_quality_check_refuses_to_evaluate_when_the_cache_rejected_every_val_file(models, folders, tmp_path):
    root, base, _ = models
    qc = _script("scripts/quality_check.py")
    (tmp_path / "val" / "a.wav").write_bytes(b"")
    manifest = write_synthetic_cache(tmp_path / "cache_val", 0, base.config, model=base)
    manifest["rejected"] = [{"path": "a.wav", "reason": "empty audio (0 samples)"}]
    (tmp_path / "cache_val" / "manifest.json").write_text(json.dumps(manifest))
    args = qc.parse_args([*folders, "--output_dir", str(tmp_path / "out")])
    (tmp_path / "out").mkdir()
    with pytest.raises(SystemExit, match="the cache rejected every file of --val_dir .*1 file skipped: rejected"):
        qc.evaluate(qc.Stages(tmp_path / "out", args), args, root / "base",
                    {r: root / "m48" for r in ("seed_recipe", "adversarial_recipe")}, tmp_path / "cache_val")


# ---- the cache's own small guards ----

def test_cache_config_file_list_and_partition_guards(tmp_path):
    from snac.cache import CacheConfig
    from snac.cache.encode import partition, read_file_list

    with pytest.raises(ValueError, match="--io_threads must be >= 1, got 0"):
        CacheConfig(input_dir="x", output_dir="y", io_threads=0).validate()
    (tmp_path / "list.txt").write_text("# only a comment\n\n")
    with pytest.raises(ValueError, match="names no files; put one audio path per line"):
        read_file_list(tmp_path / "list.txt")
    with pytest.raises(ValueError, match=r"worker index 2 outside \[0, 2\)"):
        partition([1, 2, 3], 2, 2)


def test_cache_format_guards(models, tmp_path):
    from snac.cache.format import read_manifest, weights_fingerprint

    _, _, m48 = models
    with pytest.raises(ValueError, match="has no encoder./quantizer. tensors to fingerprint"):
        weights_fingerprint(m48.head)  # a module without the encoder and quantizer
    (tmp_path / "c").mkdir()
    with pytest.raises(FileNotFoundError, match="has no manifest.json: it is not a finished code cache"):
        read_manifest(tmp_path / "c")


def test_reader_names_a_missing_source_file(models, tmp_path):
    _, base, _ = models
    write_synthetic_cache(tmp_path / "c", 2, base.config, model=base)  # rows point at audio that is not there
    cache = CodeCache(tmp_path / "c", expected_model=base)
    with pytest.raises(FileNotFoundError, match="source audio .* of cache row 0 is missing; pass audio_root="):
        cache.audio(0)


# ---- inference's helpers ----

def test_a_gpu_index_beyond_the_visible_ones_is_refused(monkeypatch):
    from snac.infer import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"--device 3: only 1 GPU\(s\) visible"):
        resolve_device("3")


def test_codes_of_more_than_one_item_are_refused(models):
    from snac.infer import check_codes

    _, base, _ = models
    with pytest.raises(ValueError, match=r"expected codes of one item: 1-D tensors or \(1, T_i\), got shape \(2, 4\)"):
        check_codes(base, [torch.zeros(2, 4, dtype=torch.long)] * 3)


def test_a_hub_repo_without_config_is_named(monkeypatch):
    import snac.hub

    monkeypatch.setattr(snac.hub, "_hub_download", lambda repo, name, **kw: None)  # reachable, file absent
    monkeypatch.setattr(snac.hub, "hub_unreachable", lambda: None)
    with pytest.raises(FileNotFoundError, match="hub repo someone/empty lacks config.json or weights"):
        resolve_pretrained("someone/empty")


def test_quality_check_stage_failure_shows_the_log_tail(tmp_path):
    qc = _script("scripts/quality_check.py")
    for name in ("train", "val", "out"):
        (tmp_path / name).mkdir()
    (tmp_path / "fail.py").write_text("print('the last words'); raise SystemExit(3)")
    args = qc.parse_args(["--train_dir", str(tmp_path / "train"), "--val_dir", str(tmp_path / "val"),
                          "--output_dir", str(tmp_path / "out")])
    st = qc.Stages(tmp_path / "out", args)
    with pytest.raises(SystemExit, match=r"(?s)stage 'cache_val' failed \(exit 3\) .*the last words"):
        st.run("cache", [tmp_path / "fail.py"], step="cache_val")
    assert st.record["attempts"]["cache"][0]["end"] == "failed (exit 3)"
