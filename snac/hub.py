"""Reading and writing models in the Hugging Face hub layout (config.json + weights), and load_model.

The model classes register themselves here (``register_model``), so this module imports none of
them: model.py and model48.py import the hub, never the other way round.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

CONFIG_NAME = "config.json"
WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")
MODEL_CLASSES: dict[str, type] = {}  # model_kind -> class; filled by model.py and model48.py


def register_model(kind: str):
    """Class decorator: ``load_model`` builds configs of this ``kind`` with this class."""
    def register(cls: type) -> type:
        MODEL_CLASSES[kind] = cls
        return cls
    return register


def model_kind(config: dict) -> str:
    """'snac48' for a 48 kHz model's config (it names its ``base``), else 'snac'."""
    return "snac48" if "base" in config else "snac"


def _hub_download(repo_id: str, filename: str) -> str | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return hf_hub_download(repo_id, filename)
    except LocalEntryNotFoundError:
        raise  # offline and not cached: not "the repo lacks this file" (it subclasses EntryNotFoundError)
    except EntryNotFoundError:
        return None


def resolve_pretrained(id_or_dir: str | os.PathLike) -> tuple[dict, str]:
    """Return (config dict, weights file path) for a local directory or a hub repo id."""
    path = Path(id_or_dir)
    if path.is_dir():
        config_file = path / CONFIG_NAME
        if not config_file.is_file():
            raise FileNotFoundError(f"{path} has no {CONFIG_NAME}: a model directory needs "
                                    f"{CONFIG_NAME} plus one of {', '.join(WEIGHT_NAMES)}")
        weights = next((str(path / n) for n in WEIGHT_NAMES if (path / n).is_file()), None)
        if weights is None:
            raise FileNotFoundError(f"{path} has {CONFIG_NAME} but no weights: expected one of "
                                    f"{', '.join(WEIGHT_NAMES)}")
    elif path.exists():
        raise ValueError(f"{path} is a file; pass a model directory (config.json + weights) or a hub id")
    else:
        if str(id_or_dir).count("/") != 1:
            raise FileNotFoundError(f"{id_or_dir} is neither a local directory nor a hub id of the "
                                    "form owner/name (e.g. hubertsiuzdak/snac_24khz)")
        try:
            config_file = _hub_download(str(id_or_dir), CONFIG_NAME)
            weights = None
            for name in WEIGHT_NAMES:
                weights = _hub_download(str(id_or_dir), name)
                if weights:
                    break
        except Exception as e:  # network, auth, missing repo: one line that says what to do
            raise RuntimeError(f"could not download {id_or_dir} from the Hugging Face hub "
                               f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                               "check the id and network, or pass a local directory") from e
        if config_file is None or weights is None:
            raise FileNotFoundError(f"hub repo {id_or_dir} lacks {CONFIG_NAME} or weights")
    with open(config_file) as f:
        config = json.load(f)
    return config, weights


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


def save_pretrained_files(directory: str | os.PathLike, config: dict,
                          state_dict: dict[str, torch.Tensor]) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    save_file(tensors, str(directory / "model.safetensors"))
    with open(directory / CONFIG_NAME, "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")


def load_model(spec: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """Load a SNAC or SNAC48 from a hub id, a model directory, or a training checkpoint (.pt).

    A training checkpoint is a dict with ``model`` (state_dict) and ``model_config`` (the
    model's ``config``; a SNAC48 config has a ``base`` key).
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
        model = MODEL_CLASSES[model_kind(ckpt["model_config"])].from_config_dict(ckpt["model_config"])
        model.load_state_dict(ckpt["model"], strict=True)
        return model
    config, _ = resolve_pretrained(spec)
    return MODEL_CLASSES[model_kind(config)].from_pretrained(spec)
