"""scripts/prepare_dataset_folder.py: deterministic split, kept relative paths, safe output."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from helpers_cache import load_script, write_audio

prep = load_script("scripts/prepare_dataset_folder.py")


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def make_corpus(root: Path) -> Path:
    src = root / "in"
    for i in range(30):
        # the same file name in two folders: relative paths keep them apart
        write_audio(src / f"spk{i % 3}" / f"utt{i // 3:02d}.{['wav', 'flac'][i % 2]}", 0.05, 16000, seed=i)
    (src / "readme.txt").write_text("ignored")
    return src


def listing(out: Path, split: str) -> list[str]:
    return sorted(str(p.relative_to(out / split)) for p in (out / split).rglob("*") if not p.is_dir())


def test_split_is_deterministic_and_keeps_relative_paths(tmp_path):
    src = make_corpus(tmp_path)
    before = snapshot(src)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert prep.main(["--input_dir", str(src), "--output_dir", str(a), "--seed", "0", "--train_ratio", "0.8"]) == 0
    assert prep.main(["--input_dir", str(src), "--output_dir", str(b), "--seed", "0", "--train_ratio", "0.8",
                      "--copy"]) == 0
    assert prep.main(["--input_dir", str(src), "--output_dir", str(c), "--seed", "1", "--train_ratio", "0.8"]) == 0
    assert listing(a, "train") == listing(b, "train") and listing(a, "val") == listing(b, "val")
    assert listing(a, "val") != listing(c, "val")  # the seed changes the split
    everything = sorted(str(p.relative_to(src)) for p in src.rglob("*.*") if p.suffix in (".wav", ".flac"))
    assert sorted(listing(a, "train") + listing(a, "val")) == everything
    assert not set(listing(a, "train")) & set(listing(a, "val")) and listing(a, "val")
    assert all(os.path.islink(a / "train" / r) for r in listing(a, "train"))
    assert not any(os.path.islink(b / "train" / r) for r in listing(b, "train"))
    # list lines are relative to the list's folder (the --file_list rule)
    assert (a / "train.txt").read_text().split() == [f"train/{r}" for r in listing(a, "train")]
    assert snapshot(src) == before  # input untouched


def test_refuses_non_empty_output_without_force_and_never_deletes_input(tmp_path, capsys):
    src = make_corpus(tmp_path)
    before = snapshot(src)
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    assert prep.main(["--input_dir", str(src), "--output_dir", str(out)]) == 2
    assert "--force" in capsys.readouterr().err and not (out / "train").exists()
    assert prep.main(["--input_dir", str(src), "--output_dir", str(out), "--train_ratio", "0.5"]) == 2
    assert prep.main(["--input_dir", str(src), "--output_dir", str(out), "--force", "--train_ratio", "0.5"]) == 0
    first_val = listing(out, "val")
    # --force again with another ratio replaces the old split (no stale links leak into train/val)
    assert prep.main(["--input_dir", str(src), "--output_dir", str(out), "--force", "--train_ratio", "0.9"]) == 0
    assert len(listing(out, "val")) < len(first_val)
    assert sorted(listing(out, "train") + listing(out, "val")) == sorted(
        str(p.relative_to(src)) for p in src.rglob("*") if p.suffix in (".wav", ".flac"))
    assert (out / "mine.txt").read_text() == "user data"
    assert snapshot(src) == before
    # an output inside the input would be searched as input next time: refused
    assert prep.main(["--input_dir", str(src), "--output_dir", str(src / "split")]) == 2
    assert snapshot(src) == before


def test_split_is_stable_when_files_are_added():
    files = [f"d/{i}.wav" for i in range(200)]
    train, val = prep.split_files(files, 0.9, seed=0)
    train2, val2 = prep.split_files(files + [f"e/{i}.wav" for i in range(50)], 0.9, seed=0)
    assert set(val) <= set(val2) and set(train) <= set(train2)
    assert 5 <= len(val) <= 40


def test_force_refuses_folders_it_did_not_create(tmp_path, capsys):
    src = make_corpus(tmp_path)
    out = tmp_path / "out"
    (out / "train").mkdir(parents=True)
    (out / "train" / "precious.wav").write_text("the user's own data")
    assert prep.main(["--input_dir", str(src), "--output_dir", str(out), "--force"]) == 2
    err = capsys.readouterr().err
    assert "no split.json" in err and "will not delete" in err
    assert (out / "train" / "precious.wav").read_text() == "the user's own data"
    # a split.json that is not ours (other content) does not count either
    (out / "split.json").write_text('{"something": "else"}')
    assert prep.main(["--input_dir", str(src), "--output_dir", str(out), "--force"]) == 2
    assert (out / "train" / "precious.wav").exists()


def test_lists_work_with_cache_file_list(tmp_path):
    """train.txt as written is a valid --file_list: every train file is cached, nothing else."""
    import json

    from helpers_cache import save_tiny_model

    src = tmp_path / "in"
    for i in range(6):
        write_audio(src / f"spk{i % 2}" / f"utt{i}.wav", 0.2, 24000, seed=i)
    out = tmp_path / "split"
    assert prep.main(["--input_dir", str(src), "--output_dir", str(out), "--train_ratio", "0.7"]) == 0
    cache_cli = load_script("cache_codes_multigpu.py")
    cache = tmp_path / "cache"
    model = save_tiny_model(tmp_path / "model")
    assert cache_cli.main(["--file_list", str(out / "train.txt"), "--output_dir", str(cache),
                           "--pretrained_model", str(model), "--devices", "cpu"]) == 0
    m = json.loads((cache / "manifest.json").read_text())
    assert m["complete"] and m["rejected"] == [] and m["rows"] == len(listing(out, "train")) > 0
    import pyarrow.parquet as pq

    from snac.cache import list_shards

    cached = {Path(m["input_root"]) / p for sh in list_shards(cache) for p in pq.read_table(sh)["path"].to_pylist()}
    assert cached == {out / "train" / r for r in listing(out, "train")}
    assert "relative to the folder holding the list" in " ".join(cache_cli.build_parser().format_help().split())


def test_bad_inputs_are_refused_with_one_line(tmp_path, capsys):
    src = make_corpus(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["--input_dir", str(tmp_path / "nope"), "--output_dir", str(tmp_path / "o1")], "is not a directory"),
        (["--input_dir", str(src), "--output_dir", str(tmp_path / "o2"), "--train_ratio", "0"],
         "--train_ratio must be in (0, 1]"),
        (["--input_dir", str(src), "--output_dir", str(tmp_path / "o3"), "--train_ratio", "1.5"],
         "--train_ratio must be in (0, 1]"),
        (["--input_dir", str(src / "spk0"), "--output_dir", str(src)], "overlap"),
        (["--input_dir", str(empty), "--output_dir", str(tmp_path / "o4")], "no audio files"),
    ]
    for args, message in cases:
        assert prep.main(args) == 2, args
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (args, err)
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 4))


def test_prepare_speech_holds_out_whole_languages_and_reports_the_counts(tmp_path, capsys, monkeypatch):
    """scripts/prepare_speech.py: held-out languages only in val_heldout (every set), the rest split
    train / val_seen by a stable hash, symlinks to the sources, splits.json's counts; a rerun needs --force."""
    import json

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "scripts"))  # as when run as a script
    speech = load_script("scripts/prepare_speech.py")
    sets = {"letters": tmp_path / "letters", "running": tmp_path / "running"}
    for name, root in sets.items():
        for lang in ("fr", "ru", "da"):
            for i in range(6):
                write_audio(root / lang / f"{name}{i}.wav", 0.1, 16000, seed=i)
    out = tmp_path / "speech"
    argv = ["--sets", *(f"{k}={v}" for k, v in sets.items()), "--output_dir", str(out), "--heldout", "ru",
            "--val_fraction", "0.3"]
    assert speech.main(argv) == 0
    found = {f: sorted(str(p.relative_to(out / f)) for p in (out / f).rglob("*.wav")) for f in speech.FOLDERS}
    assert sorted(p.split("/")[1] for p in found["val_heldout"]) == ["ru"] * 12  # both sets' ru, nothing else
    assert not any("/ru/" in f"/{p}" for p in found["train"] + found["val_seen"])
    assert len(found["train"]) + len(found["val_seen"]) == 24 and found["val_seen"] and found["train"]
    link = out / "train" / found["train"][0]
    assert link.is_symlink() and link.resolve() == (tmp_path / found["train"][0]).resolve()
    report = json.loads((out / "splits.json").read_text())
    assert report["heldout"] == ["ru"]
    assert {f: report["folders"][f]["files"] for f in speech.FOLDERS} == {f: len(v) for f, v in found.items()}
    assert report["folders"]["val_heldout"]["languages"]["running/ru"]["files"] == 6
    assert speech.main(argv) == 2 and "pass --force" in capsys.readouterr().err
    assert speech.main(argv + ["--force"]) == 0  # the same split again: stable
    assert {f: sorted(str(p.relative_to(out / f)) for p in (out / f).rglob("*.wav")) for f in speech.FOLDERS} == found
    with pytest.raises(SystemExit, match="is not a folder"):
        speech.main(["--sets", f"x={tmp_path / 'missing'}", "--output_dir", str(tmp_path / "o")])
