"""The tensor-parallel plan of a model on a mesh, verified by compiling it with shape-only weights.

    python -m tests.jax.models.qwen2_5.plan --mesh 1x32 [--json]

No weights are needed: the forward pass is lowered and compiled for abstract (shape, dtype,
sharding) parameters, and the compiled HLO is read back for its collectives and memory.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from dataclasses import asdict, dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from tests.infra.devices import configure_jax
from tests.infra.mesh import BATCH_AXIS, MODEL_AXIS, MeshError, MeshShape, make_mesh
from tests.jax.models.qwen2_5.config import QWEN2_5_7B, Qwen2Config
from tests.jax.models.qwen2_5.model import Qwen2ForCausalLM
from tests.jax.models.qwen2_5.tensor_parallel import (
    TensorParallelError,
    batch_sharding,
    param_sharding,
    tensor_parallel_config,
)

DEFAULT_SEQ_LEN = 1024


@dataclass(frozen=True)
class ParamRow:
    """One kind of parameter: how it is laid out and what one device holds of it."""

    role: str
    layout: str  # split / padded / replicated, in words
    per_device_bytes: int
    ideal_per_device_bytes: int


@dataclass(frozen=True)
class PlanReport:
    mesh: str
    dtype: str
    num_layers: int
    query_heads: str
    kv_heads: str
    params: list[ParamRow]
    per_device_param_bytes: int
    ideal_per_device_param_bytes: int
    param_bytes_ratio: float
    # Against total / model axis with nothing excused: what KV replication costs on top.
    param_bytes_ratio_strict: float
    all_reduces: int
    all_reduces_per_layer: float
    all_gathers: int
    other_collectives: dict[str, int]
    temp_bytes_per_device: int
    seq_len: int
    batch: int

    def check(self) -> list[str]:
        """What falls short of the plan's promises (empty when it holds)."""
        problems = []
        if self.param_bytes_ratio > 1.05:
            problems.append(f"per-device parameter bytes are {self.param_bytes_ratio:.3f}x ideal (> 1.05)")
        if self.all_reduces != 2 * self.num_layers + 1:
            problems.append(f"{self.all_reduces} all-reduces, expected 2 per layer + 1 for the embedding")
        if self.all_gathers:
            problems.append(f"{self.all_gathers} all-gathers in the forward pass")
        if self.other_collectives:
            problems.append(f"unexpected collectives: {self.other_collectives}")
        return problems


_COLLECTIVE = re.compile(r"=\s*\S+\s+(all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)(?:-start)?\(")


def count_collectives(hlo_text: str) -> Counter:
    """Collective ops in compiled HLO text (async start/done pairs counted once)."""
    return Counter(_COLLECTIVE.findall(hlo_text))


_ROLE_ORDER = (
    "embed_tokens",
    "input_layernorm",
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "post_attention_layernorm",
    "gate_proj",
    "up_proj",
    "down_proj",
    "norm",
    "lm_head",
)


def _role(path: tuple) -> str:
    """'layers.q_proj.kernel' for every layer's q_proj kernel, the module path otherwise."""
    names = [str(p) for p in path if not str(p).isdigit()]
    return "layers." + ".".join(names[-2:]) if "layers" in names else ".".join(names[-2:])


def _role_key(role: str) -> int:
    return next(i for i, name in enumerate(_ROLE_ORDER) if f".{name}." in f".{role}")


def build_report(
    cfg: Qwen2Config, mesh: Mesh, dtype_name: str = "bfloat16", seq_len: int = DEFAULT_SEQ_LEN
) -> PlanReport:
    """Lay `cfg` out on `mesh`, compile its forward for `seq_len` tokens per row, and report."""
    dtype = jnp.dtype(dtype_name)
    model_axis, batch = mesh.shape[MODEL_AXIS], mesh.shape[BATCH_AXIS]
    tp_cfg, heads = tensor_parallel_config(cfg, model_axis)
    original = dict(
        nnx.to_flat_state(nnx.state(nnx.eval_shape(lambda: Qwen2ForCausalLM(cfg, dtype=dtype, rngs=nnx.Rngs(0)))))
    )
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Qwen2ForCausalLM(tp_cfg, dtype=dtype, rngs=nnx.Rngs(0))))

    rows: dict[str, list[int]] = {}
    strict_ideal = 0
    layouts: dict[str, str] = {}
    shaped = []
    for path, variable in nnx.to_flat_state(abstract):
        sharding = param_sharding(variable, mesh)
        shaped.append((path, variable.replace(jax.ShapeDtypeStruct(variable.shape, dtype, sharding=sharding))))
        local = int(np.prod(sharding.shard_shape(variable.shape))) * dtype.itemsize
        full = int(np.prod(original[path].shape)) * dtype.itemsize
        split = MODEL_AXIS in [a for a in sharding.spec if a]
        module = str(path[-2])
        if module in ("k_proj", "v_proj") and heads.kv_replicas > 1:
            # GQA forces it: a device needs the whole KV head its queries read.
            ideal = full // heads.num_kv_heads
            layout = f"split by KV head, each replicated {heads.kv_replicas}x"
        elif split:
            ideal = full // model_axis
            layout = "split over model" + (
                f", {heads.pad_heads} zero pad heads" if module in ("q_proj", "o_proj") and heads.pad_heads else ""
            )
        else:
            ideal, layout = full, "replicated"
        strict_ideal += full // model_axis if split else full
        role = _role(path)
        acc = rows.setdefault(role, [0, 0])
        acc[0] += local
        acc[1] += ideal
        layouts[role] = layout

    params = [ParamRow(role, layouts[role], *rows[role]) for role in sorted(rows, key=_role_key)]
    state = nnx.from_flat_state(shaped)
    tokens = jax.ShapeDtypeStruct((batch, seq_len), jnp.int32, sharding=batch_sharding(mesh))

    def forward(state, ids, positions, mask):
        return nnx.merge(graphdef, state)(ids, positions, mask)

    with jax.set_mesh(mesh):
        compiled = jax.jit(forward).lower(state, tokens, tokens, tokens).compile()
    collectives = count_collectives(compiled.as_text())
    memory = compiled.memory_analysis()
    per_device = sum(r.per_device_bytes for r in params)
    ideal = sum(r.ideal_per_device_bytes for r in params)
    all_reduces = collectives.pop("all-reduce", 0)
    all_gathers = collectives.pop("all-gather", 0)
    return PlanReport(
        mesh=f"{batch}x{model_axis}",
        dtype=dtype_name,
        num_layers=cfg.num_layers,
        query_heads=f"{cfg.num_heads} -> {heads.padded_heads} ({heads.query_heads_per_device} per device)",
        kv_heads=f"{cfg.num_kv_heads} -> {heads.stored_kv_heads} ({heads.stored_kv_heads // model_axis} per device)",
        params=params,
        per_device_param_bytes=per_device,
        ideal_per_device_param_bytes=ideal,
        param_bytes_ratio=per_device / ideal,
        param_bytes_ratio_strict=per_device / strict_ideal,
        all_reduces=all_reduces,
        all_reduces_per_layer=(all_reduces - 1) / cfg.num_layers,
        all_gathers=all_gathers,
        other_collectives=dict(collectives),
        temp_bytes_per_device=int(memory.temp_size_in_bytes) if memory else -1,
        seq_len=seq_len,
        batch=batch,
    )


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def format_report(report: PlanReport) -> str:
    lines = [
        f"mesh {report.mesh} (batch x model), {report.dtype}, {report.num_layers} layers",
        f"query heads {report.query_heads}; KV heads {report.kv_heads}",
        "",
        f"{'parameter (all layers)':<38} {'layout':<40} {'per device':>13} {'ideal':>13}",
    ]
    rows = [(r.role, r.layout, r.per_device_bytes, r.ideal_per_device_bytes) for r in report.params]
    rows.append(("total", "", report.per_device_param_bytes, report.ideal_per_device_param_bytes))
    lines += [f"{role:<38} {layout:<40} {_mib(local):>13} {_mib(ideal):>13}" for role, layout, local, ideal in rows]
    layers = report.num_layers
    lines += [
        "",
        f"per-device parameters / ideal: {report.param_bytes_ratio:.4f} "
        f"(ideal = split parts / model axis + replicated parts, the KV heads GQA makes each device hold included; "
        f"{report.param_bytes_ratio_strict:.4f} against total / model axis)",
        f"all-reduces: {report.all_reduces} = {report.all_reduces_per_layer:g} per layer x {layers} + 1 (embedding)",
        f"all-gathers: {report.all_gathers}; other collectives: {report.other_collectives or 'none'}",
        f"temporary memory per device (forward, batch {report.batch} x {report.seq_len} tokens): "
        f"{_mib(report.temp_bytes_per_device)}",
    ]
    problems = report.check()
    lines.append("plan holds" if not problems else "PLAN VIOLATED: " + "; ".join(problems))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.jax.models.qwen2_5.plan", description=__doc__.split("\n")[0])
    parser.add_argument("--mesh", required=True, help="BATCHxMODEL, e.g. 1x8")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument(
        "--seq-len", type=int, default=DEFAULT_SEQ_LEN, help="tokens per row for the temporary-memory figure"
    )
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    args = parser.parse_args(argv)

    try:
        shape = MeshShape.parse(args.mesh)
    except MeshError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.seq_len < 1:
        print("error: --seq-len must be >= 1", file=sys.stderr)
        return 2
    # Before the first device query starts the CPU backend: enough simulated devices.
    configure_jax(cpu_devices=shape.size)
    try:
        mesh = make_mesh(shape, jax.devices())
        report = build_report(QWEN2_5_7B, mesh, args.dtype, args.seq_len)
    except (MeshError, TensorParallelError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(asdict(report), indent=2) if args.json else format_report(report))
    return 0 if not report.check() else 1


if __name__ == "__main__":
    sys.exit(main())
