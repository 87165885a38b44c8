"""scripts/prepare_dataset_folder.py: deterministic split, kept relative paths, safe output."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

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
