"""scripts/export_pretrained.py: checkpoint -> hub-layout directory that reloads to the same weights."""

import importlib.util
import json
import os
import stat
from pathlib import Path

import pytest
import torch

from snac.presets import TINY_24KHZ
from snac import SNAC, SNAC48, load_model

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("export_pretrained", ROOT / "scripts" / "export_pretrained.py")
export = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(export)


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """The hub id the run records, served from a local folder in the hub's layout (no network here)."""
    torch.manual_seed(0)
    repo = tmp_path / "hub" / "hubertsiuzdak" / "snac_24khz"
    SNAC(**TINY_24KHZ).save_pretrained(repo)
    (repo / "pytorch_model.bin").unlink()  # a tiny stand-in: keep the published file's digest check out of it

    def download(repo_id, filename, **hub_kwargs):
        path = tmp_path / "hub" / repo_id / filename
        return str(path) if path.exists() else None

    monkeypatch.setattr("snac.hub._hub_download", download)
    return repo


def _run_dir(tmp_path: Path) -> Path:
    """A run directory as the trainer leaves it: a checkpoint, metrics.jsonl and a cache manifest."""
    torch.manual_seed(0)
    model = SNAC48.from_snac(SNAC(**TINY_24KHZ))
    with torch.no_grad():  # move off the smart init so the round trip tests trained-looking weights
        for p in model.head.parameters():
            p.add_(0.01 * torch.randn_like(p))
    cache = tmp_path / "cache_train"
    cache.mkdir()
    (cache / "manifest.json").write_text(json.dumps({"hours": 12.5, "rows": 9000}))
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    config = {"pretrained_model": "hubertsiuzdak/snac_24khz", "train_codes": str(cache), "epochs": 15,
              "batch_size": 32, "segment_length": 4.0, "learning_rate": 1e-5, "n_ffts": [1024, 2048]}
    torch.save({"model": model.state_dict(), "model_config": model.config, "config": config,
                "iteration": 1200, "epoch": 3, "phase": "full", "best_val_loss": 1.234}, run / "best_model.pt")
    rows = [{"type": "train", "iteration": 1100, "loss/total": 2.0},
            {"type": "val", "iteration": 1000, "loss/total": 1.5, "loss/l1": 0.1, "loss/stft": 1.4},
            {"type": "val", "iteration": 1200, "loss/total": 1.234, "loss/l1": 0.09, "loss/stft": 1.144},
            {"type": "val", "iteration": 1400, "loss/total": 1.3}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return run


def test_export_round_trip_and_model_card(tmp_path, fake_hub):
    run = _run_dir(tmp_path)
    out = tmp_path / "export"
    assert export.main(["--checkpoint", str(run / "best_model.pt"), "--output_dir", str(out)]) == 0
    assert sorted(f.name for f in out.iterdir()) == ["README.md", "base_encoder.safetensors", "config.json",
                                                      "model.safetensors"]
    loaded = SNAC48.from_pretrained(out)
    expected = torch.load(run / "best_model.pt", weights_only=True)["model"]
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())
    assert isinstance(load_model(out), SNAC48)
    card = (out / "README.md").read_text()
    assert "base_model: hubertsiuzdak/snac_24khz" in card
    assert "12.50 h, 9000 utterances" in card
    assert "| iterations | 1200 |" in card
    assert "val at iteration 1200" in card and "loss/stft 1.1440" in card  # not the later row 1400


def test_export_refuses_a_non_empty_directory_and_a_foreign_file(tmp_path):
    run = _run_dir(tmp_path)
    out = tmp_path / "export"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(SystemExit, match="not empty"):
        export.main(["--checkpoint", str(run / "best_model.pt"), "--output_dir", str(out)])
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(SystemExit, match="not a checkpoint of finetune_decoder_48khz.py"):
        export.main(["--checkpoint", str(tmp_path / "other.pt"), "--output_dir", str(tmp_path / "e2")])


def test_plain_snac_checkpoint_exports_as_snac(tmp_path):
    torch.manual_seed(0)
    base = SNAC(**TINY_24KHZ)
    torch.save({"model": base.state_dict(), "model_config": base.config, "config": {}}, tmp_path / "c.pt")
    assert export.main(["--checkpoint", str(tmp_path / "c.pt"), "--output_dir", str(tmp_path / "e")]) == 0
    assert isinstance(SNAC.from_pretrained(tmp_path / "e"), SNAC)


def test_exported_files_follow_the_umask_and_the_card_holds_no_absolute_path(tmp_path, monkeypatch):
    """safetensors' save_file wrote 0600 files; the card named the base by its absolute local path."""
    torch.manual_seed(0)
    base = SNAC(**TINY_24KHZ)
    base.save_pretrained(tmp_path / "work" / "models" / "base")
    model = SNAC48.from_snac(base)
    torch.save({"model": model.state_dict(), "model_config": model.config,
                "config": {"pretrained_model": str(tmp_path / "work" / "models" / "base")}}, tmp_path / "c.pt")
    monkeypatch.chdir(tmp_path / "work")
    old = os.umask(0o022)
    try:
        assert export.main(["--checkpoint", str(tmp_path / "c.pt"), "--output_dir", str(tmp_path / "e")]) == 0
    finally:
        os.umask(old)
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in (tmp_path / "e").iterdir()}
    assert modes == dict.fromkeys(modes, 0o644) and "base_encoder.safetensors" in modes, modes
    card = (tmp_path / "e" / "README.md").read_text()
    assert str(tmp_path) not in card and "`models/base` (a local model)" in card
