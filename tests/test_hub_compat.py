"""Drop-in for upstream snac 1.2.1: its from_pretrained kwargs, its hub cache layout offline, its
directory layout both ways, and the published weights' sha256 check."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import snac.hub
from snac import SNAC, SNAC48, load_model
from snac.presets import TINY_24KHZ

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
needs_reference = pytest.mark.skipif(os.environ.get("SNAC_SKIP_REFERENCE") == "1",
                                     reason="SNAC_SKIP_REFERENCE=1: no PyPI access for the reference wheel")


def perturbed_tiny(seed: int = 0) -> SNAC:
    """A tiny SNAC whose every parameter is off its initial value (so a skipped copy shows)."""
    torch.manual_seed(seed)
    model = SNAC(**TINY_24KHZ).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def upstream_hub_cache(cache_dir: Path, repo_id: str, model: SNAC) -> Path:
    """A Hugging Face hub cache holding what upstream snac downloads: config.json + pytorch_model.bin."""
    repo = cache_dir / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    (snapshot / "config.json").write_text(json.dumps(model.config))
    torch.save(model.state_dict(), snapshot / "pytorch_model.bin")
    return snapshot


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@needs_reference
def test_upstream_loads_our_save_pretrained_and_decodes_identically(tmp_path):
    from scripts._common import import_reference

    ref = import_reference()
    ours = perturbed_tiny()
    ours.save_pretrained(tmp_path / "plain")
    assert {"config.json", "model.safetensors", "pytorch_model.bin"} <= {p.name for p in (tmp_path / "plain").iterdir()}
    theirs = ref.SNAC.from_pretrained(str(tmp_path / "plain"))
    assert same_weights(ours, theirs)
    codes = [torch.randint(0, TINY_24KHZ["codebook_size"], (1, n), generator=torch.Generator().manual_seed(1))
             for n in (3, 6, 12)]
    with torch.inference_mode():
        torch.manual_seed(2)
        a = ours.decode(codes)
        torch.manual_seed(2)
        b = theirs.decode(codes)
    assert torch.equal(a, b)


@needs_reference
def test_offline_hub_cache_of_upstream_loads_in_both_with_upstream_kwargs(tmp_path):
    """HF_HUB_OFFLINE=1 and a cache with only config.json + pytorch_model.bin: ours loads it (it used
    to look for model.safetensors first and fail), with the same kwargs upstream takes."""
    model = perturbed_tiny(3)
    upstream_hub_cache(tmp_path / "hub", "someone/snac_tiny", model)
    torch.save(model.state_dict(), tmp_path / "expected.pt")
    script = f"""
import sys, torch
sys.path.insert(0, {str(ROOT)!r})
from scripts._common import import_reference
from snac import SNAC, load_model
kw = dict(cache_dir={str(tmp_path / "hub")!r}, revision={COMMIT!r})
expected = torch.load({str(tmp_path / "expected.pt")!r}, weights_only=True)
for name, m in [("ours", SNAC.from_pretrained("someone/snac_tiny", **kw)),
                ("ours-main", SNAC.from_pretrained("someone/snac_tiny", cache_dir=kw["cache_dir"])),
                ("load_model", load_model("someone/snac_tiny", **kw)),
                ("upstream", import_reference().SNAC.from_pretrained("someone/snac_tiny", **kw))]:
    sd = m.state_dict()
    assert list(sd) == list(expected) and all(torch.equal(sd[k], expected[k]) for k in sd), name
    print(name, "ok")
try:
    SNAC.from_pretrained("someone/snac_tiny", cache_dir=kw["cache_dir"], revision="f" * 40)
except RuntimeError as e:
    print("missing revision:", e)
"""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [line.split()[0] for line in proc.stdout.splitlines()[:4]] == ["ours", "ours-main", "load_model",
                                                                          "upstream"]
    assert "missing revision: could not download someone/snac_tiny" in proc.stdout


def test_hub_kwargs_reach_hf_hub_download(monkeypatch, tmp_path):
    upstream_hub_cache(tmp_path / "hub", "someone/snac_tiny", perturbed_tiny())
    seen = []
    real = snac.hub._hub_download

    def spy(repo_id, filename, **kw):
        seen.append((filename, kw))
        return real(repo_id, filename, **kw)

    monkeypatch.setattr(snac.hub, "_hub_download", spy)
    SNAC.from_pretrained("someone/snac_tiny", cache_dir=tmp_path / "hub", revision=COMMIT, token=False,
                         local_files_only=True)
    kw = dict(cache_dir=tmp_path / "hub", revision=COMMIT, token=False, local_files_only=True)
    assert seen == [("config.json", kw), ("pytorch_model.bin", kw)]


def test_published_digest_is_checked_and_logged(monkeypatch, tmp_path, caplog):
    """A fake file under the published repo id: a mismatch is a warning line (the file still loads);
    with the expected digest patched to the fake file's, the match is logged."""
    snapshot = upstream_hub_cache(tmp_path / "hub", "hubertsiuzdak/snac_24khz", perturbed_tiny())
    kw = dict(cache_dir=tmp_path / "hub", local_files_only=True)
    with caplog.at_level(logging.INFO, logger="snac.hub"):
        SNAC.from_pretrained("hubertsiuzdak/snac_24khz", **kw)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "not the published 4b8164cc6606bfa627f1a784734c1e539891518f1191ed9194fe1e3b9b4bff40" in warnings[0].message
    assert "delete it from the hub cache" in warnings[0].message

    digest = snac.hub.sha256_file(snapshot / "pytorch_model.bin")
    monkeypatch.setitem(snac.hub.PUBLISHED_SHA256, ("hubertsiuzdak/snac_24khz", "pytorch_model.bin"), digest)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="snac.hub"):
        SNAC.from_pretrained("hubertsiuzdak/snac_24khz", **kw)
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert f"sha256 {digest} matches the published weights" in caplog.records[0].message


def test_digest_check_is_skipped_for_other_repos(tmp_path, caplog):
    upstream_hub_cache(tmp_path / "hub", "someone/snac_tiny", perturbed_tiny())
    with caplog.at_level(logging.INFO, logger="snac.hub"):
        SNAC.from_pretrained("someone/snac_tiny", cache_dir=tmp_path / "hub", local_files_only=True)
    assert not caplog.records


def test_snac48_export_keeps_safetensors_only_and_loads_from_hub_cache(tmp_path):
    m48 = SNAC48.from_snac(perturbed_tiny())
    m48.save_pretrained(tmp_path / "m48")
    assert sorted(p.name for p in (tmp_path / "m48").iterdir()) == ["config.json", "model.safetensors"]
    repo = tmp_path / "hub" / "models--someone--snac48" / "snapshots" / COMMIT
    repo.mkdir(parents=True)
    (tmp_path / "hub" / "models--someone--snac48" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--snac48" / "refs" / "main").write_text(COMMIT)
    for name in ("config.json", "model.safetensors"):
        (repo / name).write_bytes((tmp_path / "m48" / name).read_bytes())
    # pytorch_model.bin is tried first and is not in this cache: offline, that falls through
    loaded = SNAC48.from_pretrained("someone/snac48", cache_dir=tmp_path / "hub", local_files_only=True)
    assert same_weights(loaded, m48)
    assert same_weights(load_model("someone/snac48", cache_dir=tmp_path / "hub", local_files_only=True), m48)


@pytest.mark.parametrize("spec", ["runs/best_modle.pt", "best.pt", "./runs/x", "/nowhere/model"])
def test_mistyped_path_says_the_file_does_not_exist(spec):
    """Issue 14.6: a path that is not there is not looked up on the hub."""
    with pytest.raises(FileNotFoundError, match=f"{spec} does not exist"):
        load_model(spec)


def closed_port() -> int:
    import socket

    with socket.socket() as s:  # a port nothing listens on once this socket is closed
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("script", ["library", "inference.py", "cache_codes_multigpu.py"])
def test_an_unreachable_hub_fails_fast_in_one_line_naming_the_shipped_base(tmp_path, script):
    """huggingface_hub retried a refused connection for ~45 s before one line said nothing of the
    shipped base; now one request decides (issue 25, item 4)."""
    env = dict(os.environ, HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}", HF_HOME=str(tmp_path / "hf"),
               OMP_NUM_THREADS="1")
    env.pop("HF_HUB_OFFLINE", None)
    if script == "library":
        cmd = [sys.executable, "-c", "import time, sys\nfrom snac import SNAC\nt = time.time()\n"
               "try:\n    SNAC.from_pretrained('hubertsiuzdak/snac_24khz')\n"
               "except RuntimeError as e:\n    print(f'{time.time() - t:.2f}'); sys.exit(f'error: {e}')\n"]
    elif script == "inference.py":
        (tmp_path / "a.wav").write_bytes(b"")
        cmd = [sys.executable, str(ROOT / script), "--checkpoint", "hubertsiuzdak/snac_24khz", "--input",
               str(tmp_path / "a.wav"), "--output", str(tmp_path / "b.wav"), "--device", "cpu"]
    else:
        (tmp_path / "in").mkdir()
        (tmp_path / "in" / "a.wav").write_bytes(b"")
        cmd = [sys.executable, str(ROOT / script), "--input_dir", str(tmp_path / "in"), "--output_dir",
               str(tmp_path / "cache"), "--pretrained_model", "hubertsiuzdak/snac_24khz", "--devices", "cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Retrying" not in proc.stderr, proc.stderr
    assert "cannot reach the Hugging Face hub" in lines[0] and "models/speech_24khz" in lines[0] \
        and "HF_HUB_OFFLINE=1" in lines[0]
    if script == "library":
        assert float(proc.stdout) <= 5.0


def test_a_cached_hub_repo_loads_without_asking_the_hub(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    upstream_hub_cache(tmp_path / "hub", "someone/snac_tiny", perturbed_tiny())
    monkeypatch.setattr(snac.hub, "hub_unreachable", lambda: pytest.fail("the hub was asked before the cache"))
    model = SNAC.from_pretrained("someone/snac_tiny", cache_dir=tmp_path / "hub")
    assert same_weights(model, perturbed_tiny())
