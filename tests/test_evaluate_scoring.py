"""evaluate.py scores only the band a source has, gives both systems the same noise on every chunk,
and counts metric failures (issue 9.23); its bad inputs fail with one line."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import snac.metrics
from snac import SNAC, SNAC48
from snac.presets import TINY_24KHZ

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("evaluate_script", ROOT / "scripts" / "evaluate.py")
evaluate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(evaluate)


def _tone(path: Path, rate: int, seconds: float = 0.6) -> None:
    t = np.arange(int(rate * seconds)) / rate
    x = sum(np.sin(2 * np.pi * 220 * k * t) / k for k in range(1, 30)) * 0.05
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x.astype(np.float32), rate)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_models")
    torch.manual_seed(0)
    base = SNAC(**TINY_24KHZ).eval()
    with torch.no_grad():  # off the initial values (noise gains included, so the noise is audible)
        for p in base.parameters():
            p.add_(0.05 * torch.randn_like(p))
    base.save_pretrained(root / "base")
    SNAC48.from_snac(base).save_pretrained(root / "m48")
    return root


def _run(models, data, out, *extra):
    return evaluate.main(["--checkpoint", str(models / "m48"), "--base_model", str(models / "base"),
                          "--input_dir", str(data), "--output_dir", str(out), "--device", "cpu",
                          "--spectrograms", "0", "--no_optional", *extra])


@pytest.mark.parametrize("source_rate,expected", [(16000, None), (24000, None), (32000, (12000, 16000)),
                                                  (44100, (12000, 22050)), (48000, (12000, 24000)),
                                                  (96000, (12000, 24000))])
def test_scored_band_is_what_the_source_has(source_rate, expected):
    assert evaluate.scored_band(12000, 24000, source_rate, 48000) == expected


def test_band_distance_skips_24khz_sources_and_stops_at_a_32khz_nyquist(models, tmp_path):
    for rate in (24000, 32000, 48000):
        _tone(tmp_path / "data" / f"r{rate}.wav", rate)
    assert _run(models, tmp_path / "data", tmp_path / "out") == 0
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    rows = {(r["file"], r["system"]): r for r in report["files"]}
    for system in ("stock 24 kHz", "model 48 kHz"):
        assert rows[("r24000.wav", system)]["lsd_high_band"] is None  # it used to be scored
        assert rows[("r24000.wav", system)]["band_hz"] is None
        assert rows[("r32000.wav", system)]["band_hz"] == [12000, 16000]
        assert rows[("r48000.wav", system)]["band_hz"] == [12000, 24000]
        assert all(np.isfinite(rows[(f, system)]["lsd_high_band"]) for f in ("r32000.wav", "r48000.wav"))
    notes = " ".join(report["notes"])
    assert "1 file(s) at 24000 Hz or below" in notes and "1 file(s) have a Nyquist below 24000 Hz" in notes


def test_both_systems_draw_the_same_noise_on_every_chunk(models, tmp_path, monkeypatch):
    """The SNAC48 trunk is the base decoder's trunk: with the same draws its output is the base's,
    chunk after chunk. Drawn in sequence instead, the SNAC48's extra head noise shifts every later
    chunk's draws."""
    _tone(tmp_path / "data" / "a.wav", 48000, seconds=3.0)
    trunk_outputs: dict[str, list[torch.Tensor]] = {}
    real = evaluate.load_codec_pair

    def load_with_hooks(*args, **kwargs):
        model, base, spec = real(*args, **kwargs)
        n = len(model.decoder.model)
        for name, system in (("model", model), ("stock", base)):
            trunk_outputs[name] = []
            system.decoder.model[n - 1].register_forward_hook(
                lambda module, inputs, output, name=name: trunk_outputs[name].append(output.clone()))
        return model, base, spec

    monkeypatch.setattr(evaluate, "load_codec_pair", load_with_hooks)
    assert _run(models, tmp_path / "data", tmp_path / "out", "--chunk_seconds", "0.5") == 0
    assert len(trunk_outputs["model"]) == len(trunk_outputs["stock"]) >= 4
    for a, b in zip(trunk_outputs["model"], trunk_outputs["stock"]):
        assert torch.allclose(a, b, atol=1e-6)


def test_evaluation_runs_in_ieee_fp32_and_restores_the_setting(models, tmp_path, monkeypatch):
    """The evaluation's encodes and decodes run with cuDNN's TF32 off (torch's default is on), so
    its codes are the cache's and its figures do not depend on the card; the setting comes back."""
    from snac.compiling import conv_precision, conv_tf32

    _tone(tmp_path / "data" / "a.wav", 48000)
    seen = []
    real = evaluate.load_codec_pair

    def load_with_hooks(*args, **kwargs):
        model, base, spec = real(*args, **kwargs)
        for name, module in (("encode", base.encoder), ("decode", model.decoder.model[0])):
            module.register_forward_hook(lambda *_, name=name: seen.append((name, conv_tf32())))
        return model, base, spec

    monkeypatch.setattr(evaluate, "load_codec_pair", load_with_hooks)
    with conv_precision(True):
        assert _run(models, tmp_path / "data", tmp_path / "out") == 0
        assert conv_tf32() is True
    assert {name for name, _ in seen} == {"encode", "decode"} and not any(tf32 for _, tf32 in seen)


def test_metric_failures_are_counted_and_reported(models, tmp_path, monkeypatch):
    seconds = {"a": 0.4, "b": 0.5, "c": 0.6}
    for name, length in seconds.items():
        _tone(tmp_path / "data" / f"{name}.wav", 48000, seconds=length)

    def pesq(ref, est, sample_rate):  # PESQ finds no utterance in b.wav (told apart by its length)
        if len(ref) == int(48000 * seconds["b"]):
            raise RuntimeError("b'No utterances detected'")
        return 3.0

    monkeypatch.setattr(snac.metrics, "pesq_wb", pesq)
    monkeypatch.setattr(evaluate, "optional_metrics_available", lambda: {"pesq": True, "pystoi": False})
    out = tmp_path / "out"
    assert evaluate.main(["--checkpoint", str(models / "m48"), "--base_model", str(models / "base"),
                          "--input_dir", str(tmp_path / "data"), "--output_dir", str(out), "--device", "cpu",
                          "--spectrograms", "0"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["failures"] == {"stock 24 kHz": {"pesq_wb": 1}, "band replication 48 kHz": {"pesq_wb": 1},
                                  "model 48 kHz": {"pesq_wb": 1}}
    assert report["mean"]["model 48 kHz"]["pesq_wb"] == 3.0  # the mean of the files that were scored
    failed = [r for r in report["files"] if r["errors"]]
    assert {r["file"] for r in failed} == {"b.wav"}
    assert failed[0]["errors"] == {"pesq_wb": "RuntimeError: b'No utterances detected'"}
    md = (out / "report.md").read_text()
    assert "PESQ-WB failed on 1 of 3 file(s) for model 48 kHz" in md and "b.wav: RuntimeError" in md


def test_all_metrics_raises_without_an_errors_dict(monkeypatch):
    monkeypatch.setattr(snac.metrics, "si_sdr", lambda ref, est: 1 / 0)
    x = np.ones(4096, dtype=np.float32)
    with pytest.raises(ZeroDivisionError):
        snac.metrics.all_metrics(x, x, 48000, optional=False)
    errors = {}
    values = snac.metrics.all_metrics(x, x, 48000, optional=False, errors=errors)
    assert values["si_sdr"] is None and errors == {"si_sdr": "ZeroDivisionError: division by zero"}


@pytest.mark.parametrize("args,message", [
    (["--band", "12k"], "--band must be two numbers"),
    (["--band", "24000,12000"], "need 0 <= low < high"),
    (["--limit", "0"], "--limit must be >= 1"),
    (["--chunk_seconds", "-1"], "--chunk_seconds >= 0"),
])
def test_bad_flags_are_refused_by_the_parser(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--input_dir", str(tmp_path), *args])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_bad_input_dirs_and_models_are_one_line(models, tmp_path):
    with pytest.raises(SystemExit, match="is not a folder of audio files"):
        evaluate.main(["--input_dir", str(tmp_path / "nope"), "--device", "cpu"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="holds no audio"):
        evaluate.main(["--input_dir", str(tmp_path / "empty"), "--device", "cpu"])
    _tone(tmp_path / "data" / "a.wav", 48000)
    with pytest.raises(SystemExit, match="best_modle.pt does not exist"):
        evaluate.main(["--input_dir", str(tmp_path / "data"), "--checkpoint", "runs/best_modle.pt",
                       "--device", "cpu"])
    with pytest.raises(SystemExit, match="not a base SNAC"):
        evaluate.main(["--input_dir", str(tmp_path / "data"), "--base_model", str(models / "m48"),
                       "--device", "cpu"])


def test_a_file_limit_spreads_over_every_folder_not_the_first_few(tmp_path):
    from snac.evaluation import find_eval_files

    for lang in ("el", "en", "ru"):
        (tmp_path / lang).mkdir()
        for i in range(4):
            (tmp_path / lang / f"{i}.wav").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not audio")
    every = find_eval_files(tmp_path)
    assert len(every) == 12 and every == sorted(every)
    picked = find_eval_files(tmp_path, 3)
    assert [p.parent.name for p in picked] == ["el", "en", "ru"]  # the first 3 would all be el
    assert find_eval_files(tmp_path, 6) == every[::2]
    assert find_eval_files(tmp_path, 50) == every
