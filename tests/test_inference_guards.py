"""inference.py: codes decoded only by the weights that made them, no partial file left by a failed
decode, a run directory named for what it holds, a folder output made, one path per failure line
(issue 24, items 6, 15, 18; issue 25, item 8)."""

import re

import numpy as np
import pytest
import torch

from snac import SNAC, SNAC48
from snac.model import SNACEncoder
from snac.cache.format import weights_fingerprint
from snac.infer import load_codes, save_codes
from snac.presets import TINY_24KHZ
from test_inference_errors import _codes, _wav, inference, m48  # noqa: F401 (a fixture)


@pytest.fixture(scope="module")
def pair(m48):  # noqa: F811
    """The 48 kHz export (it holds its base encoder), that base, and a base of the same config with other weights."""
    torch.manual_seed(1)
    return m48.parent, SNACEncoder.from_pretrained(m48), SNAC(**TINY_24KHZ)


def _decode(checkpoint, codes_file, out, *extra):
    return inference.main(["--checkpoint", str(checkpoint), "--from_codes", "--device", "cpu",
                           "--input", str(codes_file), "--output", str(out), *extra])


def _codes_of(path, made_by):
    save_codes(path, _codes(), {"model_config": made_by.config, "weights_fingerprint": weights_fingerprint(made_by),
                                "source_sample_rate": 24000, "source_num_samples": 4000})
    return path


@pytest.mark.parametrize("kind", ["export", "training checkpoint"])
def test_codes_of_other_weights_of_the_same_config_are_refused(pair, tmp_path, capsys, kind):
    root, base, other = pair
    checkpoint = root / "m48"
    if kind == "training checkpoint":  # the trainer records its base's fingerprint
        m48 = SNAC48.from_pretrained(root / "m48")
        checkpoint = tmp_path / "best_model.pt"
        torch.save({"model": m48.state_dict(), "model_config": m48.config,
                    "base_weights_fingerprint": weights_fingerprint(base)}, checkpoint)
    mine, theirs = _codes_of(tmp_path / "mine.codes.npz", base), _codes_of(tmp_path / "theirs.codes.npz", other)
    assert _decode(checkpoint, mine, tmp_path / "a.wav") == 0  # same config, same weights: decoded
    capsys.readouterr()
    assert _decode(checkpoint, theirs, tmp_path / "b.wav") == 1  # same config (the codec check passes)
    err = capsys.readouterr().err
    assert "codes were made by other weights of the same codec config" in err and "--allow_other_weights" in err
    assert not (tmp_path / "b.wav").exists()
    assert _decode(checkpoint, theirs, tmp_path / "b.wav", "--allow_other_weights") == 0


def test_save_codes_records_the_encoder_fingerprint(pair, tmp_path):
    root, base, _ = pair
    _wav(tmp_path / "a.wav")
    assert inference.main(["--checkpoint", str(root / "m48"), "--input", str(tmp_path / "a.wav"), "--device", "cpu",
                           "--output", str(tmp_path / "y.wav"), "--save_codes"]) == 0
    assert load_codes(tmp_path / "y.codes.npz")[1]["weights_fingerprint"] == weights_fingerprint(base)


def test_a_failed_decode_leaves_no_partial_file(pair, tmp_path, monkeypatch, capsys):
    root, _, _ = pair
    _wav(tmp_path / "in" / "a.wav")

    def broken(*args, **kwargs):
        yield np.zeros(100, dtype=np.float32)
        raise RuntimeError("decoder blew up")

    monkeypatch.setattr(inference, "iter_decode", broken)
    assert inference.main(["--checkpoint", str(root / "m48"), "--input", str(tmp_path / "in"), "--device", "cpu",
                           "--output", str(tmp_path / "out")]) == 1
    assert "decoder blew up" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "out").rglob("*") if p.is_file()] == []


def test_a_run_directory_names_its_checkpoints(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"epochs": 3}')  # the trainer's flags, not a model config
    for name in ("checkpoint_iter100.pt", "latest.pt", "best_model.pt"):
        (run / name).write_bytes(b"")
    _wav(tmp_path / "a.wav")
    with pytest.raises(SystemExit) as e:
        inference.main(["--checkpoint", str(run), "--input", str(tmp_path / "a.wav"), "--output",
                        str(tmp_path / "y.wav"), "--device", "cpu"])
    assert str(e.value) == (f"error: {run} is a training run directory, not a model directory: pass one of its "
                            f"checkpoints, {run / 'best_model.pt'}, {run / 'latest.pt'}, "
                            f"{run / 'checkpoint_iter100.pt'}")


def test_a_folder_output_is_made_and_a_failure_names_the_file_once(pair, tmp_path, capsys):
    root, _, _ = pair
    _wav(tmp_path / "a.wav", seconds=0.05)
    assert inference.main(["--checkpoint", str(root / "m48"), "--input", str(tmp_path / "a.wav"), "--device", "cpu",
                           "--output", str(tmp_path / "decoded") + "/"]) == 0
    assert (tmp_path / "decoded" / "a.wav").is_file()
    real_time = re.search(r"\(([0-9.e+-]+)x real time\)", capsys.readouterr().out).group(1)
    assert float(real_time) > 0  # not '0.0x' for a short file
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    assert inference.main(["--checkpoint", str(root / "m48"), "--input", str(tmp_path / "bad.wav"), "--device", "cpu",
                           "--output", str(tmp_path / "b.wav")]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if str(tmp_path / "bad.wav") in line]
    assert lines and all(line.count(str(tmp_path / "bad.wav")) == 1 for line in lines), lines
