"""Every error inference.py and snac.infer give, each on the input that causes it, and that mistakes
in the command line are refused before any model is loaded."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from snac import SNAC, SNAC48
from snac.infer import check_codes, encode_audio, encode_blocks, load_codes, save_codes
from snac.presets import TINY_24KHZ

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("inference_script", ROOT / "inference.py")
inference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(inference)
STRIDES = TINY_24KHZ["vq_strides"]  # [4, 2, 1]
SIZE = TINY_24KHZ["codebook_size"]


@pytest.fixture(scope="module")
def m48(tmp_path_factory):
    root = tmp_path_factory.mktemp("m")
    torch.manual_seed(0)
    base = SNAC(**TINY_24KHZ)
    SNAC48.from_snac(base).save_pretrained(root / "m48", base=base)
    return root / "m48"


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fails the test if inference.py gets as far as loading a model."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the command line was checked")

    monkeypatch.setattr(inference, "load_codec_pair", refuse)


def _wav(path: Path, seconds: float = 0.3, rate: int = 24000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), 0.1 * np.sin(np.arange(int(seconds * rate)) / 7.0).astype(np.float32), rate)
    return path


def _codes(lengths=(2, 4, 8), high=SIZE):
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, high, (n,), generator=g) for n in lengths]


def _run_codes(m48, tmp_path, codes, capsys, model_config=None):
    meta = {"source_sample_rate": 24000, "source_num_samples": 4000}
    if model_config is not None:
        meta["model_config"] = model_config
    save_codes(tmp_path / "c.codes.npz", codes, meta)
    rc = inference.main(["--checkpoint", str(m48), "--from_codes", "--device", "cpu",
                         "--input", str(tmp_path / "c.codes.npz"), "--output", str(tmp_path / "y.wav")])
    return rc, capsys.readouterr().err


# ---- codes that do not fit the model (each reaches only its own check: no model_config recorded) ----

@pytest.mark.parametrize("codes,message", [
    (_codes((2, 4)), "got 2 codebooks but the model has 3 (strides [4, 2, 1])"),
    (_codes((2, 4, 7)), "code lengths [2, 4, 7] do not cover one time span with strides [4, 2, 1]"),
    (_codes((2, 4, 8), high=SIZE + 5), f"code values must lie in [0, {SIZE})"),
    ([c.clamp(max=SIZE - 1) if i else torch.full_like(c, SIZE) for i, c in enumerate(_codes())],
     f"code values must lie in [0, {SIZE})"),  # exactly one past the last code
], ids=["count", "span", "range", "range edge"])
def test_codes_that_do_not_fit_are_refused_per_file(m48, tmp_path, capsys, codes, message):
    rc, err = _run_codes(m48, tmp_path, codes, capsys)
    assert rc == 1 and message in err and not (tmp_path / "y.wav").exists()
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        check_codes(SNAC(**TINY_24KHZ), codes)


def test_codes_of_another_codec_are_refused_by_the_codec_check_alone(m48, tmp_path, capsys):
    """The codes fit this model (count, span, range) and decode fine; only the recorded codec
    (another encoder width: codes of other meaning) tells them apart."""
    codes = _codes()
    rc, err = _run_codes(m48, tmp_path, codes, capsys, model_config=SNAC(**TINY_24KHZ).config)
    assert rc == 0 and (tmp_path / "y.wav").exists()  # positive control: these codes decode
    (tmp_path / "y.wav").unlink()
    rc, err = _run_codes(m48, tmp_path, codes, capsys, model_config=dict(TINY_24KHZ, encoder_dim=16))
    assert rc == 1 and not (tmp_path / "y.wav").exists()
    assert "codes were made by another codec (encoder_dim: 16 vs 8" in err


def test_a_file_that_is_not_a_codes_file_is_refused(m48, tmp_path, capsys):
    np.savez(tmp_path / "x.codes.npz", a=np.zeros(3))
    rc = inference.main(["--checkpoint", str(m48), "--from_codes", "--input", str(tmp_path / "x.codes.npz"),
                         "--output", str(tmp_path / "y.wav"), "--device", "cpu"])
    assert rc == 1 and "is not a codes file written by inference.py --save_codes" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not a codes file"):
        load_codes(tmp_path / "x.codes.npz")


# ---- empty signals ----

def test_empty_signal_is_refused():
    model = SNAC(**TINY_24KHZ)
    with pytest.raises(ValueError, match="cannot encode an empty signal"):
        encode_audio(model, np.zeros(0, dtype=np.float32))
    with pytest.raises(ValueError, match="cannot encode an empty signal"):
        encode_blocks(model, [np.zeros(0, dtype=np.float32)] * 3, chunk_seconds=1.0)


def test_empty_audio_file_fails_that_file_with_its_reason(m48, tmp_path, capsys):
    sf.write(str(tmp_path / "empty.wav"), np.zeros(0, dtype=np.float32), 24000)
    rc = inference.main(["--checkpoint", str(m48), "--input", str(tmp_path / "empty.wav"),
                         "--output", str(tmp_path / "y.wav"), "--device", "cpu"])
    assert rc == 1 and "empty audio (0 samples)" in capsys.readouterr().err


# ---- command-line mistakes, refused before a model is loaded ----

def _refused(args, match, no_model_loading):
    with pytest.raises(SystemExit) as e:
        inference.main(["--checkpoint", "unused/model", "--device", "cpu", *args])
    assert match in str(e.value) and "\n" not in str(e.value)


def test_missing_input(tmp_path, no_model_loading):
    _refused(["--input", str(tmp_path / "nope.wav"), "--output", str(tmp_path / "y.wav")],
             f"--input {tmp_path / 'nope.wav'} does not exist", no_model_loading)


def test_folder_input_with_an_existing_file_as_output(tmp_path, no_model_loading):
    _wav(tmp_path / "in" / "a.wav")
    (tmp_path / "out.txt").write_text("x")
    _refused(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out.txt")],
             "--output must be a folder", no_model_loading)


def test_folder_input_with_a_wav_name_as_output_creates_nothing(tmp_path, no_model_loading):
    """It used to create a directory named a.wav."""
    _wav(tmp_path / "in" / "a.wav")
    _refused(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out" / "a.wav")],
             "is a file name: pass a folder", no_model_loading)
    assert not (tmp_path / "out").exists()


def test_folder_without_audio(tmp_path, no_model_loading):
    (tmp_path / "in").mkdir()
    _refused(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")], "holds no audio files",
             no_model_loading)


def test_from_codes_with_a_file_of_another_suffix(tmp_path, no_model_loading):
    _wav(tmp_path / "a.wav")
    _refused(["--from_codes", "--input", str(tmp_path / "a.wav"), "--output", str(tmp_path / "y.wav")],
             "--from_codes expects a .codes.npz file", no_model_loading)


def test_output_that_is_not_a_wav(tmp_path, no_model_loading):
    _wav(tmp_path / "a.wav")
    _refused(["--input", str(tmp_path / "a.wav"), "--output", str(tmp_path / "y.flac")],
             "must end in .wav", no_model_loading)


def test_gpu_asked_without_cuda(tmp_path, monkeypatch, no_model_loading):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _wav(tmp_path / "a.wav")
    for device in ("cuda", "0", "cuda:1"):
        with pytest.raises(SystemExit, match=f"--device {device} asks for a GPU but torch sees none; "
                                             "use --device cpu"):
            inference.main(["--checkpoint", "x/y", "--input", str(tmp_path / "a.wav"),
                            "--output", str(tmp_path / "y.wav"), "--device", device])


def test_bad_subtype_is_refused_by_the_parser(tmp_path, capsys, no_model_loading):
    _wav(tmp_path / "a.wav")
    with pytest.raises(SystemExit) as e:
        inference.main(["--checkpoint", "x/y", "--input", str(tmp_path / "a.wav"),
                        "--output", str(tmp_path / "y.wav"), "--subtype", "PCM_8"])
    assert e.value.code == 2
    assert "invalid choice: 'PCM_8'" in capsys.readouterr().err


def test_negative_chunk_seconds_is_refused(tmp_path, capsys, no_model_loading):
    with pytest.raises(SystemExit):
        inference.main(["--checkpoint", "x/y", "--input", "a.wav", "--output", "y.wav", "--chunk_seconds", "-1"])
    assert "--chunk_seconds must be >= 0" in capsys.readouterr().err


def test_mistyped_checkpoint_says_the_file_does_not_exist(tmp_path):
    _wav(tmp_path / "a.wav")
    with pytest.raises(SystemExit, match="runs/best_modle.pt does not exist"):
        inference.main(["--checkpoint", "runs/best_modle.pt", "--input", str(tmp_path / "a.wav"),
                        "--output", str(tmp_path / "y.wav"), "--device", "cpu"])
