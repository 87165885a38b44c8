"""Reading and writing models in the Hugging Face hub layout (config.json + weights), and load_model.

The model classes register themselves here (``register_model``), so this module imports none of
them: model.py and model48.py import the hub, never the other way round.

A drop-in for upstream ``snac``'s loading: a hub id takes upstream's keyword arguments (``revision``,
``cache_dir``, ``token``, ``local_files_only`` ... passed to ``huggingface_hub.hf_hub_download``),
and a hub cache holding only what upstream downloads (config.json + pytorch_model.bin) loads with
``HF_HUB_OFFLINE=1``. A plain SNAC is saved with ``pytorch_model.bin`` beside ``model.safetensors``
so upstream ``snac.SNAC.from_pretrained(dir)`` loads it too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file, save as safetensors_bytes

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
TORCH_WEIGHTS_NAME = "pytorch_model.bin"  # upstream snac reads only this file
WEIGHT_NAMES = (SAFETENSORS_NAME, TORCH_WEIGHTS_NAME)  # local directories: safetensors first
# hub repos: upstream's file first, so a cache filled by upstream snac is reused as it is and the
# published file's digest below can be checked; repos with only safetensors (our exports) fall back
HUB_WEIGHT_NAMES = (TORCH_WEIGHTS_NAME, SAFETENSORS_NAME)
# sha256 of published weight files, checked whenever one is loaded from the hub (or its cache)
PUBLISHED_SHA256 = {
    ("hubertsiuzdak/snac_24khz", TORCH_WEIGHTS_NAME):
        "4b8164cc6606bfa627f1a784734c1e539891518f1191ed9194fe1e3b9b4bff40",
}
# a path with one of these suffixes names a file, never a hub repo
FILE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".json")
MODEL_CLASSES: dict[str, type] = {}  # model_kind -> class; filled by model.py and model48.py
# one request decides whether the hub can be reached before any download: huggingface_hub's own
# retries on a dead connection take ~45 s before they give up
HUB_PROBE_SECONDS = 3.0


def register_model(kind: str):
    """Class decorator: ``load_model`` builds configs of this ``kind`` with this class."""
    def register(cls: type) -> type:
        MODEL_CLASSES[kind] = cls
        return cls
    return register


def model_kind(config: dict) -> str:
    """'snac48' for a 48 kHz model's config (it names its ``base``), else 'snac'."""
    return "snac48" if "base" in config else "snac"


def _hub_download(repo_id: str, filename: str, **hub_kwargs) -> str | None:
    """Path of ``filename`` of a hub repo (downloaded or cached); None when the repo lacks it.

    Raises ``LocalEntryNotFoundError`` when the file is not cached and cannot be downloaded
    (``HF_HUB_OFFLINE=1``, ``local_files_only=True``, no network)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return hf_hub_download(repo_id, filename, **hub_kwargs)
    except LocalEntryNotFoundError:
        raise  # offline and not cached: not "the repo lacks this file" (it subclasses EntryNotFoundError)
    except EntryNotFoundError:
        return None


def looks_like_hub_id(spec: str | os.PathLike) -> bool:
    """'owner/name' that is not a path on this machine and does not name a file (x/y.pt)."""
    text = str(spec)
    return (text.count("/") == 1 and not text.startswith((".", "/", "~"))
            and not text.lower().endswith(FILE_SUFFIXES) and not Path(text).exists())


def _check_missing_path(spec: str | os.PathLike) -> None:
    """A spec that is neither an existing path nor a hub id: say the file or directory is missing."""
    if looks_like_hub_id(spec):
        return
    text = str(spec)
    if text.lower().endswith(FILE_SUFFIXES):
        raise FileNotFoundError(f"{text} does not exist: check the path of the checkpoint file")
    raise FileNotFoundError(f"{text} does not exist: pass an existing model directory (config.json + "
                            "weights), a training checkpoint .pt, or a hub id of the form owner/name "
                            "(e.g. hubertsiuzdak/snac_24khz)")


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_published_digest(repo_id: str, filename: str, path: str | os.PathLike) -> bool | None:
    """Compare a hub file with its published sha256 (``PUBLISHED_SHA256``) and log the result.

    True: it matches (logged at INFO); False: it differs (logged as a WARNING that says how to
    fix it; the file is still loaded, since another ``revision`` may be meant); None: no published
    digest is known for this repo and file.
    """
    expected = PUBLISHED_SHA256.get((repo_id, filename))
    if expected is None:
        return None
    digest = sha256_file(path)
    if digest == expected:
        logger.info("%s %s: sha256 %s matches the published weights", repo_id, filename, digest)
        return True
    logger.warning("%s %s at %s has sha256 %s, not the published %s: another revision or a damaged "
                   "download; delete it from the hub cache to download it again", repo_id, filename,
                   path, digest, expected)
    return False


def resolve_hub_file(repo_id: str, names: tuple[str, ...], **hub_kwargs) -> str | None:
    """The first of ``names`` that the repo holds (cached or downloaded); None if it holds none.

    A file that is not cached while offline is skipped for the next name (upstream's cache holds
    only pytorch_model.bin); when none is found that way, the offline error is raised."""
    from huggingface_hub.utils import LocalEntryNotFoundError

    offline_error = None
    for name in names:
        try:
            path = _hub_download(repo_id, name, **hub_kwargs)
        except LocalEntryNotFoundError as e:
            offline_error = offline_error or e
            continue
        if path:
            check_published_digest(repo_id, name, path)
            return path
    if offline_error is not None:
        raise offline_error
    return None


def hub_unreachable() -> str | None:
    """None when the hub's endpoint (HF_ENDPOINT) answers one HEAD request within HUB_PROBE_SECONDS
    (any HTTP status counts; proxies from the environment are used); else why not, in one line."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=HUB_PROBE_SECONDS)
    except Exception as e:
        text = str(e).strip().splitlines()
        return f"{type(e).__name__}: {text[0] if text else ''} at {constants.ENDPOINT}"
    return None


def offline_hint() -> str:
    from .presets import SHIPPED_BASE

    return (f"pass a local model directory (the shipped base: {SHIPPED_BASE}), or set HF_HUB_OFFLINE=1 to use "
            "the hub cache only")


def _cached_hub_files(repo: str, **hub_kwargs) -> tuple[str, str] | None:
    """(config, weights) of a hub repo from the local cache alone (no request); None if not cached."""
    from huggingface_hub.utils import LocalEntryNotFoundError

    local = {**hub_kwargs, "local_files_only": True}
    try:
        config_file = _hub_download(repo, CONFIG_NAME, **local)
        weights = resolve_hub_file(repo, HUB_WEIGHT_NAMES, **local) if config_file else None
    except (LocalEntryNotFoundError, OSError, ValueError):  # not cached, or a cache it cannot read
        return None
    return (config_file, weights) if config_file and weights else None


def resolve_pretrained(id_or_dir: str | os.PathLike, **hub_kwargs) -> tuple[dict, str]:
    """Return (config dict, weights file path) for a local directory or a hub repo id.

    ``hub_kwargs`` go to ``huggingface_hub.hf_hub_download`` (revision, cache_dir, token,
    local_files_only, ...) and are ignored for a local directory, as upstream snac does."""
    path = Path(id_or_dir)
    if path.is_dir():
        config_file = path / CONFIG_NAME
        if not config_file.is_file():
            raise FileNotFoundError(f"{path} has no {CONFIG_NAME}: a model directory needs "
                                    f"{CONFIG_NAME} plus one of {', '.join(WEIGHT_NAMES)}")
        weights = next((str(path / n) for n in WEIGHT_NAMES if (path / n).is_file()), None)
        if weights is None:
            checkpoints = checkpoint_files(path)
            if checkpoints:  # a training run directory: its config.json holds the flags, not a model
                raise FileNotFoundError(f"{path} is a training run directory, not a model directory: pass one of "
                                        f"its checkpoints, {', '.join(str(path / c) for c in checkpoints[:3])}"
                                        + (f" ({len(checkpoints) - 3} more)" if len(checkpoints) > 3 else ""))
            raise FileNotFoundError(f"{path} has {CONFIG_NAME} but no weights: expected one of "
                                    f"{', '.join(WEIGHT_NAMES)}")
    elif path.exists():
        raise ValueError(f"{path} is a file; pass a model directory (config.json + weights) or a hub id")
    else:
        _check_missing_path(id_or_dir)
        repo = str(id_or_dir)
        from huggingface_hub import constants

        online = not (constants.HF_HUB_OFFLINE or hub_kwargs.get("local_files_only"))
        # offline first: a cached repo loads without a request; an unreachable hub fails in seconds
        cached = _cached_hub_files(repo, **hub_kwargs) if online else None
        why = None if cached or not online else hub_unreachable()
        if why:
            raise RuntimeError(f"cannot reach the Hugging Face hub for {repo} ({why}) and it is not in the hub "
                               f"cache: {offline_hint()}")
        try:
            config_file, weights = cached or (None, None)
            if not cached:
                config_file = _hub_download(repo, CONFIG_NAME, **hub_kwargs)
                weights = resolve_hub_file(repo, HUB_WEIGHT_NAMES, **hub_kwargs) if config_file else None
        except Exception as e:  # network, auth, missing repo: one line that says what to do
            raise RuntimeError(f"could not download {repo} from the Hugging Face hub "
                               f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                               f"check the id, or {offline_hint()}") from e
        if config_file is None or weights is None:
            raise FileNotFoundError(f"hub repo {repo} lacks {CONFIG_NAME} or weights "
                                    f"({' or '.join(HUB_WEIGHT_NAMES)})")
    with open(config_file) as f:
        config = json.load(f)
    return config, weights


def checkpoint_files(directory: Path) -> list[str]:
    """The training checkpoints (*.pt) a directory holds: best_model.pt, latest.pt first, then the newest."""
    names = sorted((p.name for p in directory.glob("*.pt")), key=lambda n: (n != "best_model.pt", n != "latest.pt",
                                                                            -(directory / n).stat().st_mtime))
    return names


def resolve_extra_file(id_or_dir: str | os.PathLike, filename: str, **hub_kwargs) -> str | None:
    """Path of another file of a model directory or hub repo (e.g. an export's base encoder); None
    when it has none. Offline and not cached counts as none."""
    path = Path(id_or_dir)
    if path.is_dir():
        return str(path / filename) if (path / filename).is_file() else None
    if path.exists() or not looks_like_hub_id(id_or_dir):
        return None
    from huggingface_hub.utils import LocalEntryNotFoundError

    try:
        return _hub_download(str(id_or_dir), filename, **hub_kwargs)
    except LocalEntryNotFoundError:
        return None


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a state_dict from .safetensors or a torch file; pickled code is refused."""
    path = str(path)
    if path.endswith(".safetensors"):
        return load_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"refusing to load {path}: it carries pickled code, not only tensors "
                         "(weights_only=True). Re-save it as a plain state_dict or safetensors") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state_dict (got {type(state).__name__})")
    return state


def save_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """A safetensors file written like every other file (mode from the process umask): safetensors'
    own save_file creates it 0600, unreadable to the other users of a shared machine."""
    Path(path).write_bytes(safetensors_bytes(tensors))


def save_pretrained_files(directory: str | os.PathLike, config: dict, state_dict: dict[str, torch.Tensor],
                          torch_copy: bool = False) -> None:
    """Write config.json and model.safetensors; with ``torch_copy`` also pytorch_model.bin (the file
    upstream snac reads: a plain state_dict, so ``torch.load(weights_only=True)`` opens it)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    save_tensors(tensors, directory / SAFETENSORS_NAME)
    if torch_copy:
        torch.save(tensors, directory / TORCH_WEIGHTS_NAME)
    with open(directory / CONFIG_NAME, "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")


def load_model(spec: str | os.PathLike, map_location: str | torch.device = "cpu", **hub_kwargs):
    """Load a SNAC or SNAC48 from a hub id, a model directory, or a training checkpoint (.pt).

    A training checkpoint is a dict with ``model`` (state_dict) and ``model_config`` (the
    model's ``config``; a SNAC48 config has a ``base`` key). ``hub_kwargs`` as in
    ``resolve_pretrained``.
    """
    path = Path(spec)
    if path.is_file():
        try:
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as e:
            raise ValueError(f"refusing to load {path}: it carries pickled code") from e
        except Exception as e:
            raise ValueError(f"{path} is not a readable training checkpoint ({e})") from e
        if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
            raise ValueError(f"{path} is not a training checkpoint of this project "
                             "(expected keys 'model' and 'model_config')")
        config, state = ckpt["model_config"], ckpt["model"]
    else:
        config, weights = resolve_pretrained(spec, **hub_kwargs)
        state = load_weights(weights)
    from . import model as _model, model48 as _model48  # noqa: F401 (they register their classes)

    cls = MODEL_CLASSES[model_kind(config)]
    model = cls.from_config_dict(config)
    model.load_state_dict(state, strict=True)
    return model.eval() if not path.is_file() else model
