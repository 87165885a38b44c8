"""An exported 48 kHz model stands alone (issue 14.2), and SNAC48 reads its saved head back (issue 9.24)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import snac.model48
from snac import SNAC, SNAC48, SNACEncoder, load_model
from snac.presets import TINY_24KHZ

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


export = _script("export_pretrained", ROOT / "scripts" / "export_pretrained.py")
inference = _script("inference_script", ROOT / "inference.py")


def perturbed(model: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    """Every parameter moved off its initial value, so a skipped copy cannot pass for a copy."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model.eval()


def no_hub(monkeypatch):
    def refuse(repo_id, filename, **hub_kwargs):
        raise AssertionError(f"the hub was asked for {repo_id}/{filename}")

    monkeypatch.setattr("snac.hub._hub_download", refuse)


@pytest.fixture
def trained(tmp_path):
    """A local base (perturbed) and a training checkpoint made from it that records it."""
    torch.manual_seed(0)
    base = perturbed(SNAC(**TINY_24KHZ), 1)
    base.save_pretrained(tmp_path / "base")
    model = perturbed(SNAC48.from_snac(base), 2, 0.01)
    model.quantizer.load_state_dict(base.quantizer.state_dict())  # the VQ stays frozen in training
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": model.state_dict(), "model_config": model.config, "iteration": 7,
                "config": {"pretrained_model": str(tmp_path / "base")}}, run / "best_model.pt")
    return tmp_path, base, model


def test_export_holds_the_base_encoder_and_runs_offline_without_the_base(trained, tmp_path, monkeypatch):
    root, base, model = trained
    sf.write(str(root / "in.wav"), (0.2 * np.sin(np.arange(30000) / 5.0)).astype(np.float32), 32000)
    # the reference output: the training checkpoint with its base present
    assert inference.main(["--checkpoint", str(root / "run" / "best_model.pt"), "--input", str(root / "in.wav"),
                           "--output", str(root / "ref.wav"), "--device", "cpu", "--subtype", "FLOAT"]) == 0
    out = root / "export"
    assert export.main(["--checkpoint", str(root / "run" / "best_model.pt"), "--output_dir", str(out)]) == 0
    sizes = {f.name: f.stat().st_size for f in out.iterdir()}
    assert set(sizes) == {"README.md", "config.json", "model.safetensors", "base_encoder.safetensors"}
    config = json.loads((out / "config.json").read_text())
    assert config["base_model"] == str(root / "base") and config["base_encoder"] == "base_encoder.safetensors"
    card = (out / "README.md").read_text()
    assert "`base` (a local model)" in card and str(root) not in card and "hubertsiuzdak" not in card
    assert 'SNACEncoder.from_pretrained("<this repo or directory>")' in card

    # the base is gone and the hub is out of reach: the export alone goes from audio to 48 kHz audio
    (root / "base").rename(root / "base_moved")
    no_hub(monkeypatch)
    held = SNACEncoder.from_pretrained(out).state_dict()
    source = base.state_dict()
    assert list(held) == [k for k in source if not k.startswith("decoder.")]
    assert all(torch.equal(v, source[k]) for k, v in held.items())
    assert inference.main(["--checkpoint", str(out), "--input", str(root / "in.wav"),
                           "--output", str(root / "exp.wav"), "--device", "cpu", "--subtype", "FLOAT"]) == 0
    a, _ = sf.read(str(root / "ref.wav"), dtype="float32")
    b, _ = sf.read(str(root / "exp.wav"), dtype="float32")
    assert a.shape == b.shape and np.abs(a - b).max() < 1e-5


def test_export_refuses_a_base_with_other_codebooks(trained):
    root, _, _ = trained
    torch.manual_seed(0)
    perturbed(SNAC(**TINY_24KHZ), 9).save_pretrained(root / "other")
    with pytest.raises(SystemExit, match="has other codebooks than this checkpoint"):
        export.main(["--checkpoint", str(root / "run" / "best_model.pt"), "--output_dir", str(root / "e"),
                     "--base_model", str(root / "other")])
    SNAC(**dict(TINY_24KHZ, codebook_size=32)).save_pretrained(root / "other_codec")
    with pytest.raises(SystemExit, match="codebook_size: 32 vs 64"):
        export.main(["--checkpoint", str(root / "run" / "best_model.pt"), "--output_dir", str(root / "e"),
                     "--base_model", str(root / "other_codec")])


def test_export_without_a_reachable_base_says_which_flag_to_pass(trained, monkeypatch):
    root, _, model = trained
    torch.save({"model": model.state_dict(), "model_config": model.config, "config": {}}, root / "norecord.pt")
    with pytest.raises(SystemExit, match="records no --pretrained_model; pass --base_model"):
        export.main(["--checkpoint", str(root / "norecord.pt"), "--output_dir", str(root / "e1")])
    (root / "base").rename(root / "gone")
    with pytest.raises(SystemExit, match="cannot load the base model .*base.*pass --base_model"):
        export.main(["--checkpoint", str(root / "run" / "best_model.pt"), "--output_dir", str(root / "e2")])
    assert not (root / "e2").exists() or not any((root / "e2").iterdir())


def test_export_bad_checkpoint_paths(tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        export.main(["--checkpoint", str(tmp_path / "best_modle.pt"), "--output_dir", str(tmp_path / "e")])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="is not a readable training checkpoint"):
        export.main(["--checkpoint", str(tmp_path / "junk.pt"), "--output_dir", str(tmp_path / "e")])


def test_plain_snac_export_also_loads_in_upstream_layout(tmp_path):
    torch.manual_seed(0)
    base = perturbed(SNAC(**TINY_24KHZ), 3)
    torch.save({"model": base.state_dict(), "model_config": base.config, "config": {}}, tmp_path / "c.pt")
    assert export.main(["--checkpoint", str(tmp_path / "c.pt"), "--output_dir", str(tmp_path / "e")]) == 0
    bin_state = torch.load(tmp_path / "e" / "pytorch_model.bin", weights_only=True)
    assert all(torch.equal(bin_state[k], v) for k, v in base.state_dict().items())


# ---- issue 9.24: the saved head section is read back ----

def test_changed_head_constant_does_not_break_old_exports(tmp_path, monkeypatch):
    torch.manual_seed(0)
    old = perturbed(SNAC48.from_snac(SNAC(**TINY_24KHZ)), 4)
    old.save_pretrained(tmp_path / "old")
    torch.save({"model": old.state_dict(), "model_config": old.config}, tmp_path / "old.pt")
    old_kernel = old.config["head"]["final_kernel"]
    monkeypatch.setattr(snac.model48, "INTERP_TAPS", snac.model48.INTERP_TAPS + 2)  # a later release's head
    assert SNAC48.from_snac(SNAC(**TINY_24KHZ)).head.conv.kernel_size[0] == old_kernel + 8  # new models change
    codes = [torch.randint(0, 64, (1, n), generator=torch.Generator().manual_seed(5)) for n in (2, 4, 8)]
    for loaded in (SNAC48.from_pretrained(tmp_path / "old"), load_model(tmp_path / "old.pt")):
        assert loaded.head.conv.kernel_size[0] == old_kernel
        with torch.inference_mode():
            torch.manual_seed(6)
            a = old.decode(codes)
            torch.manual_seed(6)
            b = loaded.decode(codes)
        assert torch.equal(a, b)


def test_smart_init_follows_a_saved_kernel(monkeypatch):
    """A head built from a saved kernel of another length still starts as the base's output at the
    base-rate samples (its interpolator length is read off the kernel)."""
    torch.manual_seed(0)
    base = SNAC(**dict(TINY_24KHZ, noise=False)).eval()
    kernel = snac.model48.final_kernel_size(2, taps=4)
    model = SNAC48(base.config, head={"upsample_factor": 2, "final_kernel": kernel})
    model.quantizer.load_state_dict(base.quantizer.state_dict())
    n = len(model.decoder.model)
    model.decoder.model.load_state_dict(base.decoder.model[:n].state_dict())
    model.head.smart_init(base.decoder.model[n], base.decoder.model[n + 1])
    codes = [torch.randint(0, 64, (1, k), generator=torch.Generator().manual_seed(1)) for k in (4, 8, 16)]
    with torch.inference_mode():
        assert torch.allclose(model.eval().decode(codes)[..., ::2], base.decode(codes), atol=1e-5)


@pytest.mark.parametrize("head,match", [({"upsample_factor": 3, "final_kernel": 35}, "upsample_factor 3"),
                                        ({"upsample_factor": 2, "final_kernel": 36}, "final_kernel 36")])
def test_inconsistent_head_config_is_refused(head, match):
    with pytest.raises(ValueError, match=match):
        SNAC48(TINY_24KHZ, head=head)


def test_config_without_head_section_gets_the_default_head():
    config = SNAC48(TINY_24KHZ).config
    legacy = {k: v for k, v in config.items() if k != "head"}
    assert SNAC48.from_config_dict(legacy).config == config
