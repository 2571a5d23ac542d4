"""Checkpoints in the Hugging Face layout: config.json, model.safetensors, tokenizer files.

Safetensors only: a folder that offers only pickle-based weights (.bin, .pt, .pth, .ckpt, .pkl) is
refused, since unpickling runs arbitrary code. The latent-panel PCA basis travels inside
model.safetensors under the prefix `viz.pca.`.
"""

from __future__ import annotations

import ctypes
import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import torch
from accelerate import init_empty_weights
from accelerate.utils import set_module_tensor_to_device
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import PreTrainedTokenizerFast

from .config import HydraConfig
from .unified import HydraModel
from .viz import PCABasis

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
VIZ_PREFIX = "viz.pca."
HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.md"]
# safe_open memory-maps the file, and the pages read through a map count in this process's resident
# memory until the map is closed; re-opening the file after every REOPEN_BYTES of tensors read keeps
# that window small while tensors are cast or quantised (the pages stay in the page cache, not in RSS).
# Freed heap memory is handed back at each re-open too (_return_freed_memory). paper-1.5b in nf4 on the
# CPU peaked at 1.10x its weights with 32 MiB, 1.2-1.45x with 256 MiB (bench/load_memory.py).
REOPEN_BYTES = 32 * 2**20


@dataclass
class Checkpoint:
    model: HydraModel
    tokenizer: PreTrainedTokenizerFast
    basis: PCABasis | None
    path: Path
    precision: str = "fp32"
    num_parameters: int | None = None  # counted before quantisation (bitsandbytes packs two 4-bit weights a byte)


def _tied(config: HydraConfig) -> bool:
    return bool(config.llm.get("tie_word_embeddings", False))


def save_pretrained(model: HydraModel, tokenizer: PreTrainedTokenizerFast, directory: str | Path,
                    basis: PCABasis | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write the checkpoint folder. dtype: store floating weights in this dtype (e.g. float16 to halve
    the file; loading casts each tensor to the precision asked for as it is read)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.to_json_file(directory / CONFIG_NAME)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if _tied(model.config):
        state.pop("llm.lm_head.weight", None)  # shares storage with the input embeddings
    if dtype is not None:  # the flow space's whitening stays exact: its basis maps every generated latent
        state = {k: v.to(dtype) if v.is_floating_point() and not k.startswith("latent_whitening.") else v
                 for k, v in state.items()}
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


def _unreadable(path: Path, error: Exception) -> ValueError:
    """The error for a weights file safetensors cannot read: a pickle under the safetensors name, or damage."""
    with path.open("rb") as file:
        head = file.read(2)
    if head == b"PK" or head[:1] == b"\x80":  # torch.save's zip archive, or a bare pickle
        return ValueError(f"{path.name} is a pickle (torch.save) file under a safetensors name; HYDRA loads "
                          "safetensors only, because unpickling can run arbitrary code")
    return ValueError(f"{path.name} is not a readable safetensors file (damaged or incomplete: {str(error)[:200]})")


def _open_weights(path: Path):
    try:
        return safe_open(path, framework="pt", device="cpu")
    except Exception as error:  # safetensors raises its own SafetensorsError for a bad header or size
        raise _unreadable(path, error) from None


def _read_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's name and shape, from the file's header (no tensor data is read)."""
    with _open_weights(path) as file:
        return {name: tuple(file.get_slice(name).get_shape()) for name in file.keys()}


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None


def _return_freed_memory() -> None:
    """Hand the heap's freed pages back to the system. Casting and quantising allocate each layer's
    temporaries between long-lived tensors, and glibc keeps the freed holes otherwise (measured: 1.4 GiB
    held after loading paper-1.5b in int8 on the CPU)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _read_tensors(path: Path, names: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors one at a time, as safetensors maps them (CPU, the file's dtype, no copy yet)."""
    names = list(names)
    while names:
        with _open_weights(path) as file:  # re-opened every REOPEN_BYTES, see there
            read = 0
            while names and read < REOPEN_BYTES:
                name = names.pop(0)
                try:
                    tensor = file.get_tensor(name)
                except Exception as error:
                    raise _unreadable(path, error) from None
                read += tensor.nbytes
                yield name, tensor
        _return_freed_memory()


def _check_names(model: HydraModel, shapes: dict[str, tuple[int, ...]]) -> None:
    """Every mismatch between the model's tensors and the checkpoint's names and shapes, named."""
    own = model.state_dict()
    expected = set(own)
    if _tied(model.config):
        expected.discard("llm.lm_head.weight")
    missing = sorted(expected - set(shapes))
    unexpected = sorted(set(shapes) - set(own))
    wrong = [f"{k}: checkpoint {tuple(shapes[k])} vs config {tuple(own[k].shape)}"
             for k in sorted(expected & set(shapes)) if tuple(shapes[k]) != tuple(own[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensors missing from the weights (e.g. {missing[:3]})")
    if unexpected:
        problems.append(f"{len(unexpected)} tensors the config does not have (e.g. {unexpected[:3]})")
    if wrong:
        problems.append(f"{len(wrong)} tensors whose shape does not match config.json (e.g. {wrong[:3]})")
    if problems:
        raise ValueError("config.json and model.safetensors do not match: " + "; ".join(problems))


def load_state(model: HydraModel, state: dict[str, torch.Tensor]) -> None:
    """Load in-memory weights into a model built on the meta device; every mismatch is named."""
    _check_names(model, {k: tuple(v.shape) for k, v in state.items()})
    model.load_state_dict(state, strict=False, assign=True)
    if _tied(model.config):
        model.llm.lm_head.weight = model.llm.model.embed_tokens.weight


def _attribute_paths(model: HydraModel) -> dict[str, str]:
    """State-dict key -> the attribute path of the parameter or buffer it fills. They differ where a module
    renames its keys in state-dict hooks (layers.TimestepEmbedder keeps the saved names mlp.0 / mlp.2)."""
    paths: dict[int, str] = {}
    for name, tensor in chain(model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False)):
        paths.setdefault(id(tensor), name)
    return {key: paths[id(tensor)] for key, tensor in model.state_dict(keep_vars=True).items()}


def build_empty(config: HydraConfig) -> HydraModel:
    """The model with parameters on the meta device (no memory; used for loading and `info`)."""
    with init_empty_weights(include_buffers=False):
        model = HydraModel(config)
    model.llm.tie_weights()  # skipped while weights are empty
    return model


def load_pretrained(path_or_id: str | Path, device: str | torch.device | None = "cpu", precision: str | None = None,
                    offload: bool = False, stage_on_cpu: bool = False) -> Checkpoint:
    """Load a checkpoint straight into `precision` on `device` (default: the CPU in float32, as training wants).

    The weights file is read tensor by tensor; each tensor is cast to its dtype (float32 for
    precision.KEEP_FP32, the precision's dtype for the rest) and moved to its device as it is read, and for
    int8 / nf4 each quantizable linear is quantised from the tensor as read, so no float32 copy of the whole
    model exists on the host or the device. A tensor already in its dtype on the CPU stays memory-mapped from
    the file (safetensors maps, it does not copy).

    device, precision: as precision.place (device None: CUDA if there is one; precision None: bf16 on CUDA,
    fp32 on the CPU). offload: the LLM's decoder layers stay on the CPU (in the precision's dtype) and are
    streamed to `device` per layer. stage_on_cpu: prepare everything for `device` (its compute dtype, the
    quantised codes) but leave it on the CPU, to be moved later with precision.move (ZeroGPU: CUDA exists only
    inside GPU calls, and bitsandbytes quantises on the CPU as well)."""
    from .precision import DTYPES, compute_dtype, move, resolve, weight_dtype, _cast_unquantized

    path = resolve_checkpoint(path_or_id)
    _check_folder(path)
    config = _read_config(path / CONFIG_NAME)
    device, precision = resolve(device, precision, offload)
    if offload and stage_on_cpu:
        raise ValueError("offload and stage_on_cpu do not go together: offload already keeps the layers on the CPU")
    dtype = compute_dtype(precision, device)
    load_device = torch.device("cpu") if stage_on_cpu else device
    weights = path / WEIGHTS_NAME
    shapes = _read_shapes(weights)
    basis_names = [k for k in shapes if k.startswith(VIZ_PREFIX)]
    model_shapes = {k: v for k, v in shapes.items() if not k.startswith(VIZ_PREFIX)}
    model = build_empty(config)
    _check_names(model, model_shapes)
    num_parameters = sum(p.numel() for p in model.parameters())
    paths = _attribute_paths(model)
    quantized, bnb = set(), None
    if precision not in DTYPES:
        from .quantize import fill_weight, replace_linears

        bnb, names = replace_linears(model, precision, dtype)
        quantized = {name + ".weight" for name in names}
    for key, tensor in _read_tensors(weights, list(model_shapes)):
        target = paths[key]
        if target in quantized:
            fill_weight(model.get_submodule(target.rpartition(".")[0]), tensor, bnb, dtype, load_device)
            continue
        layer_offloaded = offload and target.startswith("llm.model.layers.")
        set_module_tensor_to_device(model, target, "cpu" if layer_offloaded else load_device, value=tensor,
                                    dtype=weight_dtype(key, dtype) if tensor.is_floating_point() else None,
                                    clear_cache=False)
    if _tied(config):
        model.llm.lm_head.weight = model.llm.model.embed_tokens.weight
    # What the file does not hold (the rotary frequencies) is cast and moved like the rest; every tensor
    # read above is already in its dtype and on its device, so these are no-ops for them.
    model = move(_cast_unquantized(model, dtype), load_device, offload).eval()
    basis = None
    if basis_names:
        basis = PCABasis.from_tensors({k[len(VIZ_PREFIX):]: v for k, v in _read_tensors(weights, basis_names)})
    tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
    tokenizer.padding_side = "left"
    if len(tokenizer) > config.llm["vocab_size"]:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the LLM only {config.llm['vocab_size']}")
    return Checkpoint(model=model, tokenizer=tokenizer, basis=basis, path=path, precision=precision,
                      num_parameters=num_parameters)
