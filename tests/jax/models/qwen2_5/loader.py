"""Loading a Hugging Face Qwen2/Qwen2.5 checkpoint directory (safetensors only) into the model.

Strict by design: every tensor the model needs must be present with the right shape, and
every tensor present must be used. A weight is never left at its random initialization.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from tqdm import tqdm

from tests.jax.models.qwen2_5.config import Qwen2Config
from tests.jax.models.qwen2_5.model import Qwen2ForCausalLM

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
_MAX_LISTED = 10


class CheckpointError(ValueError):
    """A checkpoint directory this loader refuses; the message names the tensors or files."""


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")


def tensor_files(model_dir: str | Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it, from the index or the single file."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir} is not a directory: point at a Hugging Face checkpoint directory")
    index = model_dir / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as err:
            raise CheckpointError(f"{index} is not a safetensors index (no valid 'weight_map'): {err}") from err
        files = {name: model_dir / file for name, file in weight_map.items()}
        absent = sorted({str(f.name) for f in files.values() if not f.is_file()})
        if absent:
            raise CheckpointError(f"{index} names shard files that do not exist: {_listing(absent)}")
        return files
    single = model_dir / SINGLE_FILE
    if single.is_file():
        with safe_open(single, framework="numpy") as f:
            return {name: single for name in f.keys()}
    if any((model_dir / name).exists() for name in _PICKLE_FILES):
        raise CheckpointError(
            f"{model_dir} holds only PyTorch pickle weights, which are never loaded (unpickling runs code); "
            "convert them with transformers: Qwen2ForCausalLM.from_pretrained(d).save_pretrained(d)"
        )
    raise CheckpointError(f"{model_dir} has neither {SINGLE_FILE} nor {INDEX_FILE}")


def hf_name(path: tuple) -> tuple[str, bool]:
    """The Hugging Face name of a model parameter and whether it is stored transposed.

    The modules mirror Hugging Face's names; only the leaves differ: our (in, out) `kernel`
    is PyTorch's (out, in) `weight`, and the embedding table is its `weight`.
    """
    *modules, leaf = (str(p) for p in path)
    if leaf == "kernel":
        return ".".join([*modules, "weight"]), True
    if leaf == "embedding":
        return ".".join([*modules, "weight"]), False
    return ".".join([*modules, leaf]), False


def _read_tensors(
    files: dict[str, Path], wanted: dict[str, tuple[tuple[int, ...], bool]]
) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (name, array) for `wanted` tensors, each file opened once and memory-mapped."""
    with ExitStack() as stack:
        handles = {}
        for name in wanted:
            file = files[name]
            if file not in handles:
                handles[file] = stack.enter_context(safe_open(file, framework="numpy"))
            yield name, handles[file].get_tensor(name)


def load_model(model_dir: str | Path, dtype: jnp.dtype = jnp.float32, *, progress: bool = False) -> Qwen2ForCausalLM:
    """The model with every weight from the checkpoint, converted to `dtype`, on the default device.

    `progress` shows a progress bar over the tensors on stderr.
    """
    cfg = Qwen2Config.from_pretrained(model_dir)
    files = tensor_files(model_dir)
    abstract = nnx.eval_shape(lambda: Qwen2ForCausalLM(cfg, dtype=dtype, rngs=nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract)
    flat = nnx.to_flat_state(abstract_state)

    wanted: dict[str, tuple[tuple[int, ...], bool]] = {}
    for path, variable in flat:
        name, transposed = hf_name(path)
        shape = tuple(variable.shape)
        wanted[name] = (shape[::-1] if transposed else shape, transposed)
    missing = sorted(set(wanted) - set(files))
    unexpected = sorted(set(files) - set(wanted))
    if missing:
        raise CheckpointError(f"checkpoint {model_dir} is missing tensors the model needs: {_listing(missing)}")
    if unexpected:
        raise CheckpointError(
            f"checkpoint {model_dir} has tensors this Qwen2 model does not use: {_listing(unexpected)} "
            "(is config.json, e.g. tie_word_embeddings or num_hidden_layers, the one these weights were saved with?)"
        )

    values: dict[str, jax.Array] = {}
    mismatched = []
    tensors = tqdm(_read_tensors(files, wanted), total=len(wanted), desc="loading weights", disable=not progress)
    for name, array in tensors:
        expected, transposed = wanted[name]
        if tuple(array.shape) != expected:
            mismatched.append(f"{name} has shape {tuple(array.shape)}, expected {expected}")
            continue
        values[name] = jnp.asarray((array.T if transposed else array).astype(dtype))
    if mismatched:
        raise CheckpointError(f"checkpoint {model_dir} has tensors of the wrong shape: {_listing(mismatched)}")

    loaded = [(path, variable.replace(values[hf_name(path)[0]])) for path, variable in flat]
    return nnx.merge(graphdef, nnx.from_flat_state(loaded))
