#!/usr/bin/env python
"""Build the quality testbed's speech folders from the two speech sets, holding out whole languages.

  ../shared/data/fetch_speech.sh KLETTRES            # letters and syllables (KLettres)
  ../shared/data/fetch_running_speech.sh RUNNING     # read sentences (Tux Paint stamps)
  uv run python scripts/prepare_speech.py --sets klettres=KLETTRES running=RUNNING --output_dir SPEECH

writes (symlinks to the fetched files, absolute targets):

  SPEECH/train/<set>/<lang>/...          every language not held out, minus the seen-language val files
  SPEECH/val_seen/<set>/<lang>/...       --val_fraction of each trained language's files (never trained on)
  SPEECH/val_heldout/<set>/<lang>/...    every file of the --heldout languages (never trained on)
  SPEECH/splits.json                     the rule, the languages, file counts and minutes per folder

A set's language is the first folder under it (KLettres: DEST/<lang>/<alpha|syllab>/*.ogg; running
speech: DEST/<lang>/*.ogg). A file's side is a hash of (seed, set, relative path): stable when files
are added. Defaults: held-out languages it, en (KLettres' held-out pair, as for base v1), ru (running
speech with a real top band) and el (running speech low-passed near 8 kHz: shows whether a head
invents a top band). Never writes inside the sets.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere in the repo

from snac.audio import AudioError, audio_info  # noqa: E402
from snac.cache.encode import find_audio_files  # noqa: E402

from prepare_dataset_folder import split_fraction  # noqa: E402

FOLDERS = ("train", "val_seen", "val_heldout")
DEFAULT_HELDOUT = ("it", "en", "ru", "el")


def parse_sets(items: list[str]) -> dict[str, Path]:
    sets = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--sets: {item!r} is not NAME=DIR (e.g. running=~/speech/running)")
        root = Path(path).expanduser().resolve()
        if not root.is_dir():
            raise SystemExit(f"--sets: {root} is not a folder: fetch it first (see this script's --help)")
        sets[name] = root
    return sets


def plan(sets: dict[str, Path], heldout: set[str], val_fraction: float, seed: int) -> dict[str, list]:
    """{folder: [(set, rel_path, source)]} for every audio file of every set."""
    out = {f: [] for f in FOLDERS}
    for name, root in sets.items():
        for rel in find_audio_files(root):
            lang = Path(rel).parts[0] if len(Path(rel).parts) > 1 else ""
            if lang in heldout:
                folder = "val_heldout"
            elif split_fraction(f"{name}/{rel}", seed) < val_fraction:
                folder = "val_seen"
            else:
                folder = "train"
            out[folder].append((name, rel, root / rel))
    return out


def summarise(files: list) -> dict:
    langs: dict[str, dict] = {}
    for name, rel, src in files:
        key = f"{name}/{Path(rel).parts[0]}"
        entry = langs.setdefault(key, {"files": 0, "minutes": 0.0, "unreadable": 0})
        entry["files"] += 1
        try:
            info = audio_info(src)
            entry["minutes"] += info.frames / info.sample_rate / 60
        except AudioError:
            entry["unreadable"] += 1
    for entry in langs.values():
        entry["minutes"] = round(entry["minutes"], 2)
    return {"files": len(files), "minutes": round(sum(e["minutes"] for e in langs.values()), 1),
            "languages": dict(sorted(langs.items()))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", nargs="+", required=True, metavar="NAME=DIR", help="the fetched speech sets")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--heldout", default=",".join(DEFAULT_HELDOUT),
                   help="comma-separated languages kept out of training entirely (every set)")
    p.add_argument("--val_fraction", type=float, default=0.03,
                   help="fraction of each trained language's files kept for val_seen")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace an earlier run's folders")
    args = p.parse_args(argv)

    sets = parse_sets(args.sets)
    heldout = {x.strip() for x in args.heldout.split(",") if x.strip()}
    out = Path(args.output_dir).expanduser().resolve()
    marker = out / "splits.json"
    if out.exists() and any(out.iterdir()):
        if not args.force:
            print(f"error: {out} is not empty: pass --force to replace an earlier run of this script",
                  file=sys.stderr)
            return 2
        if not marker.is_file():
            print(f"error: {out} holds no splits.json: not this script's output, left alone", file=sys.stderr)
            return 2
        for folder in FOLDERS:
            shutil.rmtree(out / folder, ignore_errors=True)
    files = plan(sets, heldout, args.val_fraction, args.seed)
    for folder, entries in files.items():
        for name, rel, src in entries:
            dst = out / folder / name / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(src, dst)
    report = {"written_by": "prepare_speech.py", "sets": {k: str(v) for k, v in sets.items()},
              "heldout": sorted(heldout), "val_fraction": args.val_fraction, "seed": args.seed,
              "folders": {folder: summarise(entries) for folder, entries in files.items()}}
    marker.write_text(json.dumps(report, indent=2) + "\n")
    for folder in FOLDERS:
        s = report["folders"][folder]
        print(f"{folder:12s} {s['files']:6d} files {s['minutes']:7.1f} min  "
              f"{', '.join(sorted(s['languages']))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
