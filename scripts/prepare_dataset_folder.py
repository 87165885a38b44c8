#!/usr/bin/env python
"""Split an audio folder into OUTPUT/train and OUTPUT/val, deterministically.

  uv run python scripts/prepare_dataset_folder.py --input_dir data/raw --output_dir data/split \
      --train_ratio 0.95 --seed 0 [--copy] [--force]

Finds wav/flac/ogg/mp3 recursively and keeps each file's path relative to the input folder (two
files named utt1.wav in different folders never collide). A file's side is decided by a hash of
(seed, relative path), so it does not move when other files are added or removed. Symlinks by
default (absolute targets), --copy to copy. Also writes train.txt / val.txt and split.json.

File lists: each line is a path relative to the folder holding the list (OUTPUT), e.g.
"train/spk1/utt001.wav" -- the rule cache_codes_multigpu.py --file_list follows -- so
`cache_codes_multigpu.py --file_list OUTPUT/train.txt` caches exactly the train files.

Refuses a non-empty output folder unless --force; --force replaces only OUTPUT/train, OUTPUT/val
and the three files, and only when OUTPUT/split.json shows an earlier run of this script made
them (otherwise it refuses). Never writes to or deletes anything in the input folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere in the repo

from snac.audio import AudioError, audio_info, format_duration  # noqa: E402
from snac.cache.encode import find_audio_files  # noqa: E402

SPLITS = ("train", "val")
OUTPUT_FILES = ("train.txt", "val.txt", "split.json")
WRITER = "prepare_dataset_folder.py"  # split.json's "written_by": what --force may replace


def split_fraction(rel_path: str, seed: int) -> float:
    """A stable number in [0, 1) per (seed, path): the file goes to train when it is < train_ratio."""
    digest = hashlib.sha256(f"{seed}\0{rel_path}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


def split_files(files: list[str], train_ratio: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic split of relative paths; at least one val file when train_ratio < 1 and
    there are two or more files (the one with the highest hash value)."""
    keys = {f: split_fraction(f, seed) for f in files}
    train = sorted(f for f in files if keys[f] < train_ratio)
    val = sorted(f for f in files if keys[f] >= train_ratio)
    if not val and train_ratio < 1 and len(files) >= 2:
        moved = max(train, key=lambda f: keys[f])
        train.remove(moved)
        val = [moved]
    return train, val


def audio_hours(root: Path, files: list[str], threads: int = 16) -> tuple[float, list[str]]:
    """Total hours from the headers (no decoding), and the files whose header cannot be read."""
    def seconds(rel: str) -> float | None:
        try:
            info = audio_info(root / rel)
            return info.frames / info.sample_rate
        except (AudioError, FileNotFoundError):
            return None

    with ThreadPoolExecutor(threads) as pool:
        secs = list(pool.map(seconds, files))
    return sum(s for s in secs if s) / 3600, [f for f, s in zip(files, secs) if s is None]


def _inside(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


def written_by_us(out: Path) -> bool:
    """True when OUTPUT/split.json is the summary an earlier run of this script wrote."""
    try:
        summary = json.loads((out / "split.json").read_text())
    except (OSError, ValueError):
        return False
    # runs before "written_by" existed are recognised by their summary's keys
    return isinstance(summary, dict) and (summary.get("written_by") == WRITER or
                                          {"input_dir", "seed", "train_files", "val_files"} <= set(summary))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input_dir", required=True, help="folder of audio files (searched recursively)")
    ap.add_argument("--output_dir", required=True, help="where train/ and val/ are created")
    ap.add_argument("--train_ratio", type=float, default=0.95, help="fraction of files for train (0 < r <= 1; default 0.95)")
    ap.add_argument("--seed", type=int, default=0, help="changes which files go to val (default 0)")
    ap.add_argument("--copy", action="store_true", help="copy files instead of symlinking them")
    ap.add_argument("--force", action="store_true", help="replace the split an earlier run of this script "
                    "wrote into --output_dir (checked via its split.json)")
    args = ap.parse_args(argv)

    src = Path(args.input_dir).absolute()
    out = Path(args.output_dir).absolute()
    if not src.is_dir():
        print(f"error: --input_dir {src} is not a directory", file=sys.stderr)
        return 2
    if not 0 < args.train_ratio <= 1:
        print(f"error: --train_ratio must be in (0, 1], got {args.train_ratio}", file=sys.stderr)
        return 2
    if _inside(out.resolve(), src.resolve()) or _inside(src.resolve(), out.resolve()):
        print(f"error: --output_dir {out} and --input_dir {src} overlap; pick an output outside the input "
              "(and not containing it)", file=sys.stderr)
        return 2
    if out.exists() and any(out.iterdir()) and not args.force:
        print(f"error: --output_dir {out} is not empty; pass --force to replace its train/, val/ and "
              "split files, or choose an empty folder", file=sys.stderr)
        return 2
    ours = [n for n in SPLITS + OUTPUT_FILES if os.path.lexists(out / n)]
    if ours and not written_by_us(out):
        print(f"error: --output_dir {out} has {', '.join(ours)} but no split.json of an earlier "
              f"{WRITER} run, so --force will not delete them; move them away or choose another "
              "--output_dir", file=sys.stderr)
        return 2

    files = find_audio_files(src)
    if not files:
        print(f"error: no audio files (wav/flac/ogg/mp3) under {src}", file=sys.stderr)
        return 2
    train, val = split_files(files, args.train_ratio, args.seed)

    out.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:  # --force: only what this script made; rmtree unlinks symlinks, never follows them
        if (out / name).is_symlink() or (out / name).is_file():
            (out / name).unlink()
        elif (out / name).is_dir():
            shutil.rmtree(out / name)
    for name in OUTPUT_FILES:
        if (out / name).is_file():
            (out / name).unlink()
    for name, subset in zip(SPLITS, (train, val)):
        base = out / name
        base.mkdir()
        for rel in subset:
            dst = base / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if args.copy:
                shutil.copy2(src / rel, dst)
            else:
                os.symlink(src / rel, dst)
        # relative to the list's folder (OUTPUT): the rule of cache_codes_multigpu.py --file_list
        (out / f"{name}.txt").write_text("".join(f"{name}/{r}\n" for r in subset))

    train_h, bad_train = audio_hours(src, train)
    val_h, bad_val = audio_hours(src, val)
    summary = {"written_by": WRITER, "input_dir": str(src), "seed": args.seed, "train_ratio": args.train_ratio,
               "mode": "copy" if args.copy else "symlink", "train_files": len(train), "val_files": len(val),
               "train_hours": round(train_h, 4), "val_hours": round(val_h, 4),
               "unreadable_headers": len(bad_train) + len(bad_val)}
    (out / "split.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"train: {len(train):,} files, {format_duration(train_h * 3600)} -> {out / 'train'}")
    print(f"val:   {len(val):,} files, {format_duration(val_h * 3600)} -> {out / 'val'}")
    if bad_train or bad_val:
        print(f"note: {len(bad_train) + len(bad_val)} files have unreadable headers (the cache step will "
              f"list them as rejected), e.g. {(bad_train + bad_val)[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
