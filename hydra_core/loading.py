"""Checkpoints in the Hugging Face layout: config.json, model.safetensors, tokenizer files.

Safetensors only: a folder that offers only pickle-based weights (.bin, .pt, .pth, .ckpt, .pkl) is
refused, since unpickling runs arbitrary code. The latent-panel PCA basis travels inside
model.safetensors under the prefix `viz.pca.`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import init_empty_weights
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerFast

from .config import HydraConfig
from .unified import HydraModel
from .viz import PCABasis

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
VIZ_PREFIX = "viz.pca."
HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.md"]


@dataclass
class Checkpoint:
    model: HydraModel
    tokenizer: PreTrainedTokenizerFast
    basis: PCABasis | None
    path: Path


def _tied(config: HydraConfig) -> bool:
    return bool(config.llm.get("tie_word_embeddings", False))


def save_pretrained(model: HydraModel, tokenizer: PreTrainedTokenizerFast, directory: str | Path,
                    basis: PCABasis | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write the checkpoint folder. dtype: store floating weights in this dtype (e.g. float16 to halve
    the file; loading upcasts to float32 before placement)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.to_json_file(directory / CONFIG_NAME)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if _tied(model.config):
        state.pop("llm.lm_head.weight", None)  # shares storage with the input embeddings
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    if basis is not None:
        state.update({VIZ_PREFIX + k: v for k, v in basis.to_tensors().items()})
    save_file(state, directory / WEIGHTS_NAME, metadata={"format": "pt", "dtype": str(dtype or "as trained")})
    tokenizer.save_pretrained(directory)
    return directory


def resolve_checkpoint(path_or_id: str | Path) -> Path:
    """A local folder as is; otherwise a Hub id fetched with huggingface_hub (safetensors and text only).

    `owner/name` is a Hub id unless its first part is a local folder: then it is a mistyped local path
    (e.g. runs/tiny before the build made it) and the error says which folder is missing."""
    path = Path(path_or_id)
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            raise ValueError(f"{path} is a pickle file; HYDRA loads safetensors only. Convert it with "
                             "safetensors.torch.save_file and pass the folder that holds it.")
        raise ValueError(f"{path} is a file; pass the checkpoint folder (with {CONFIG_NAME} and {WEIGHTS_NAME})")
    if path.is_dir():
        return path
    text = str(path_or_id)
    looks_local = text.startswith((".", "/", "~")) or text.count("/") != 1 or Path(text.split("/")[0]).is_dir()
    if looks_local:
        raise FileNotFoundError(f"checkpoint {text!r} is neither a folder nor a Hub id: the folder {path.resolve()} "
                                "does not exist (a Hub id is owner/name, with no local folder called owner)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(text, allow_patterns=HUB_PATTERNS))
    except (RepositoryNotFoundError, HFValidationError) as error:
        raise FileNotFoundError(f"checkpoint {text!r} is neither a local folder (no {path.resolve()}) nor a "
                                f"Hub repository ({type(error).__name__})") from None


def _check_folder(path: Path) -> None:
    if not (path / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{path} has no {CONFIG_NAME}")
    if not (path / WEIGHTS_NAME).is_file():
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise ValueError(f"{path} holds only pickle weights ({', '.join(pickles)}); HYDRA loads "
                             f"safetensors only, because unpickling can run arbitrary code. Convert them to "
                             f"{WEIGHTS_NAME}.")
        raise FileNotFoundError(f"{path} has no {WEIGHTS_NAME}")
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{path} has no tokenizer.json")


def _read_config(path: Path) -> HydraConfig:
    try:
        return HydraConfig.from_json_file(path)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path.name} is not valid JSON ({error.msg} at line {error.lineno}, column "
                         f"{error.colno})") from None
    except (TypeError, KeyError, AttributeError, ValueError) as error:
        raise ValueError(f"{path.name} does not describe a HYDRA model ({type(error).__name__}: {error})") from None


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except Exception as error:  # safetensors raises its own SafetensorsError for a bad header or size
        with path.open("rb") as file:
            head = file.read(2)
        if head == b"PK" or head[:1] == b"\x80":  # torch.save's zip archive, or a bare pickle
            raise ValueError(f"{path.name} is a pickle (torch.save) file under a safetensors name; HYDRA loads "
                             "safetensors only, because unpickling can run arbitrary code") from None
        raise ValueError(f"{path.name} is not a readable safetensors file (damaged or incomplete: "
                         f"{str(error)[:200]})") from None


def load_state(model: HydraModel, state: dict[str, torch.Tensor]) -> None:
    """Load weights into a model built on the meta device; every mismatch is named."""
    own = model.state_dict()
    expected = set(own)
    if _tied(model.config):
        expected.discard("llm.lm_head.weight")
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)} vs config {tuple(own[k].shape)}"
             for k in sorted(expected & set(state)) if state[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensors missing from the weights (e.g. {missing[:3]})")
    if unexpected:
        problems.append(f"{len(unexpected)} tensors the config does not have (e.g. {unexpected[:3]})")
    if wrong:
        problems.append(f"{len(wrong)} tensors whose shape does not match config.json (e.g. {wrong[:3]})")
    if problems:
        raise ValueError("config.json and model.safetensors do not match: " + "; ".join(problems))
    model.load_state_dict(state, strict=False, assign=True)
    if _tied(model.config):
        model.llm.lm_head.weight = model.llm.model.embed_tokens.weight


def build_empty(config: HydraConfig) -> HydraModel:
    """The model with parameters on the meta device (no memory; used for loading and `info`)."""
    with init_empty_weights(include_buffers=False):
        model = HydraModel(config)
    model.llm.tie_weights()  # skipped while weights are empty
    return model


def load_pretrained(path_or_id: str | Path) -> Checkpoint:
    """Load a checkpoint on the CPU in float32 (precision and device are applied by the caller)."""
    path = resolve_checkpoint(path_or_id)
    _check_folder(path)
    config = _read_config(path / CONFIG_NAME)
    state = _read_weights(path / WEIGHTS_NAME)
    basis_state = {k[len(VIZ_PREFIX):]: state.pop(k) for k in list(state) if k.startswith(VIZ_PREFIX)}
    model = build_empty(config)
    load_state(model, {k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    model.eval()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
    tokenizer.padding_side = "left"
    if len(tokenizer) > config.llm["vocab_size"]:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the LLM only {config.llm['vocab_size']}")
    basis = PCABasis.from_tensors(basis_state) if basis_state else None
    return Checkpoint(model=model, tokenizer=tokenizer, basis=basis, path=path)

