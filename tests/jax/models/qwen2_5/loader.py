# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""Loading a Hugging Face Qwen2/Qwen2.5 checkpoint directory (safetensors only) into the model.

Strict by design: every tensor the model needs must be present with the right shape, and
every tensor present must be used. A weight is never left at its random initialization.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, SingleDeviceSharding
from safetensors import SafetensorError, safe_open

from tests.jax.infra.compat import value_of
from tests.jax.infra.devices import golden_device
from tests.jax.infra.mesh import MODEL_AXIS
from tests.jax.models.qwen2_5.config import Qwen2Config
from tests.jax.models.qwen2_5.model import PLAIN, Kernels, Qwen2ForCausalLM
from tests.jax.models.qwen2_5.tensor_parallel import (
    RegionReader,
    build_model,
    model_shapes,
    param_sharding,
    tensor_parallel_config,
)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
_MAX_LISTED = 10
# Stored dtypes a weight may have: converting integers (quantized weights) would be silently wrong.
_FLOATING = ("F64", "F32", "F16", "BF16")


class CheckpointError(ValueError):
    """A checkpoint directory this loader refuses; the message names the tensors or files."""


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (
        f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
    )


@contextmanager
def _opened(file: Path) -> Iterator:
    """A safetensors file opened for reading, or an error naming the file."""
    try:
        handle = safe_open(file, framework="numpy")
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            f"{file} is not a readable safetensors file ({err}): download or save it again"
        ) from err
    with handle:
        yield handle


def tensor_files(model_dir: str | Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it, from the index or the single file."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CheckpointError(
            f"{model_dir} is not a directory: point at a Hugging Face checkpoint directory"
        )
    index = model_dir / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            files = {
                str(name): model_dir / str(file) for name, file in weight_map.items()
            }
        except (
            json.JSONDecodeError,
            UnicodeDecodeError,
            KeyError,
            TypeError,
            AttributeError,
        ) as err:
            raise CheckpointError(
                f"{index} is not a safetensors index (no valid 'weight_map'): {err}"
            ) from err
        absent = sorted({str(f.name) for f in files.values() if not f.is_file()})
        if absent:
            raise CheckpointError(
                f"{index} names shard files that do not exist: {_listing(absent)}"
            )
        return files
    single = model_dir / SINGLE_FILE
    if single.is_file():
        with _opened(single) as f:
            return {name: single for name in f.keys()}
    if any((model_dir / name).exists() for name in _PICKLE_FILES):
        raise CheckpointError(
            f"{model_dir} holds only PyTorch pickle weights, which are never loaded (unpickling runs code); "
            "convert them with transformers: Qwen2ForCausalLM.from_pretrained(d).save_pretrained(d)"
        )
    raise CheckpointError(f"{model_dir} has neither {SINGLE_FILE} nor {INDEX_FILE}")


@dataclass(frozen=True)
class StoredTensor:
    file: Path
    shape: tuple[int, ...]
    dtype: str  # safetensors' name: F32, BF16, I8, ...


def stored_tensors(files: dict[str, Path]) -> dict[str, StoredTensor]:
    """Every indexed tensor's file, shape and dtype, from the file headers alone; an index that
    sends a tensor to a shard without it is refused."""
    found: dict[str, StoredTensor] = {}
    for file in sorted(set(files.values())):
        with _opened(file) as handle:
            for name in handle.keys():
                piece = handle.get_slice(name)
                found[name] = StoredTensor(
                    file, tuple(piece.get_shape()), piece.get_dtype()
                )
    misplaced = sorted(
        name
        for name, file in files.items()
        if name not in found or found[name].file != file
    )
    if misplaced:
        where = [f"{name} -> {files[name].name}" for name in misplaced]
        raise CheckpointError(
            f"{INDEX_FILE} sends tensors to shards that do not hold them: {_listing(where)}: download it again"
        )
    return {name: found[name] for name in files}


def hf_name(path: tuple) -> str:
    """The Hugging Face name of a model parameter: the modules and leaves mirror Hugging Face's
    names and layouts one to one."""
    return ".".join(str(p) for p in path)


@contextmanager
def _open_tensor(file: Path, name: str, dtype: jnp.dtype) -> Iterator[RegionReader]:
    """Region reads of one tensor, memory-mapped only while open. A region holding NaN or
    infinity is refused: checked where it is read, so at no extra pass over the files.
    """
    with _opened(file) as handle:
        tensor = handle.get_slice(name)

        def read(index: tuple[slice, ...]) -> np.ndarray:
            region = tensor[index]
            if not np.isfinite(region).all():
                raise CheckpointError(
                    f"{name} in {file} holds NaN or infinite values: the checkpoint is corrupt"
                )
            return np.ascontiguousarray(region, dtype=dtype)

        yield read


def check_checkpoint(model_dir: str | Path, cfg: Qwen2Config) -> dict[str, Path]:
    """The tensor files of a checkpoint whose headers match `cfg`: every tensor the model needs,
    with its shape and a floating dtype, and nothing it does not use; else an error naming them.
    """
    files = tensor_files(model_dir)
    abstract = model_shapes(cfg)
    wanted: dict[str, tuple[int, ...]] = {}
    for path, variable in nnx.to_flat_state(nnx.state(abstract)):
        wanted[hf_name(path)] = tuple(value_of(variable).shape)
    missing = sorted(set(wanted) - set(files))
    unexpected = sorted(set(files) - set(wanted))
    if missing:
        raise CheckpointError(
            f"checkpoint {model_dir} is missing tensors the model needs: {_listing(missing)}"
        )
    if unexpected:
        raise CheckpointError(
            f"checkpoint {model_dir} has tensors this Qwen2 model does not use: {_listing(unexpected)} "
            "(is config.json, e.g. tie_word_embeddings or num_hidden_layers, the one these weights were saved with?)"
        )
    stored = stored_tensors(files)
    mismatched = [
        f"{n} has shape {stored[n].shape}, expected {s}"
        for n, s in wanted.items()
        if stored[n].shape != s
    ]
    if mismatched:
        raise CheckpointError(
            f"checkpoint {model_dir} has tensors of the wrong shape: {_listing(sorted(mismatched))}"
        )
    integral = [
        f"{n} ({t.dtype} in {t.file.name})"
        for n, t in stored.items()
        if t.dtype not in _FLOATING
    ]
    if integral:
        raise CheckpointError(
            f"checkpoint {model_dir} has non-floating-point tensors: {_listing(sorted(integral))}; only "
            f"{', '.join(_FLOATING)} weights load (quantized checkpoints are not supported)"
        )
    return files


def load_model(
    model_dir: str | Path,
    dtype: jnp.dtype = jnp.float32,
    *,
    mesh: Mesh | None = None,
    kernels: Kernels = PLAIN,
    progress: bool = False,
) -> Qwen2ForCausalLM:
    """The checkpoint's model with every weight converted to `dtype`: on the default device, or,
    with `mesh`, the padded tensor-parallel model (tensor_parallel.py) with each device's shard
    read straight from the files, so memory holds the shards and one tensor's pages at a time.

    `kernels`: how the model computes (model.Kernels; the golden's by default). `progress` shows
    a progress bar over the tensors on stderr.
    """
    cfg = Qwen2Config.from_pretrained(model_dir)
    _, plan = tensor_parallel_config(cfg, 1 if mesh is None else mesh.shape[MODEL_AXIS])
    files = check_checkpoint(model_dir, cfg)

    def source(path: tuple):
        name = hf_name(path)
        return _open_tensor(files[name], name, dtype)

    if mesh is None:
        device = SingleDeviceSharding(golden_device())
        placement = lambda variable: device  # noqa: E731
    else:
        placement = lambda variable: param_sharding(variable, mesh)  # noqa: E731
    options = {"kernels": kernels, "progress": progress}
    return build_model(cfg, dtype, plan, source, placement, **options)
