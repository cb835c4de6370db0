# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""The tensor-parallel plan of a model on a mesh, verified by compiling it with shape-only weights.

    python -m tests.jax.models.qwen2_5.plan --mesh 1x32 [--device tt] [--json]

No weights are needed: the forward pass is lowered and compiled for abstract (shape, dtype,
sharding) parameters, and the compiled HLO is read back for its collectives and memory. With
--device tt the same forward is also compiled by the TT plugin (no card needed: a mock system
descriptor is made once per plugin version) and its TTNN collectives are reported beside.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, replace

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from tests.infra.collectives import compile_and_count
from tests.infra.devices import (
    CPU,
    TT,
    DeviceUnavailableError,
    configure_jax,
    platform_devices,
)
from tests.infra.mesh import BATCH_AXIS, MODEL_AXIS, MeshError, MeshShape, make_mesh
from tests.infra.tt_plugin import TTPluginError, enable_compile_only, has_card
from tests.jax.models.qwen2_5.config import QWEN2_5_7B, Qwen2Config
from tests.jax.models.qwen2_5.model import Qwen2ForCausalLM
from tests.jax.models.qwen2_5.tensor_parallel import (
    TensorParallelError,
    abstract_model,
    batch_sharding,
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
    # The same forward compiled by the TT plugin (plan --device tt): its TTNN collectives.
    ttnn_collectives: dict[str, int] | None = None

    def check(self) -> list[str]:
        """What falls short of the plan's promises (empty when it holds)."""
        problems = []
        if self.param_bytes_ratio > 1.05:
            problems.append(
                f"per-device parameter bytes are {self.param_bytes_ratio:.3f}x ideal (> 1.05)"
            )
        if self.all_reduces != 2 * self.num_layers + 1:
            problems.append(
                f"{self.all_reduces} all-reduces, expected 2 per layer + 1 for the embedding"
            )
        if self.all_gathers:
            problems.append(f"{self.all_gathers} all-gathers in the forward pass")
        if self.other_collectives:
            problems.append(f"unexpected collectives: {self.other_collectives}")
        if (
            self.ttnn_collectives is not None
            and self.ttnn_collectives != self.planned_collectives()
        ):
            problems.append(
                f"TTNN collectives {self.ttnn_collectives}, planned {self.planned_collectives()}"
            )
        return problems

    def planned_collectives(self) -> dict[str, int]:
        return {"all_reduce": 2 * self.num_layers + 1, "all_gather": 0}


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
    """'layers.q_proj.weight' for every layer's q_proj weight, the module path otherwise."""
    names = [str(p) for p in path if not str(p).isdigit()]
    return (
        "layers." + ".".join(names[-2:]) if "layers" in names else ".".join(names[-2:])
    )


def _role_key(role: str) -> int:
    return next(i for i, name in enumerate(_ROLE_ORDER) if f".{name}." in f".{role}")


def lower_forward(
    cfg: Qwen2Config, mesh: Mesh, dtype_name: str, seq_len: int
) -> jax.stages.Lowered:
    """The padded forward of `cfg` on `mesh` for `seq_len` tokens per batch slot, lowered with
    shape-only weights."""
    model = abstract_model(cfg, jnp.dtype(dtype_name), mesh)
    graphdef, state = nnx.split(model)
    tokens = jax.ShapeDtypeStruct(
        (mesh.shape[BATCH_AXIS], seq_len), jnp.int32, sharding=batch_sharding(mesh)
    )

    def forward(state, ids, positions, mask):
        return nnx.merge(graphdef, state)(ids, positions, mask)

    with jax.set_mesh(mesh):
        return jax.jit(forward).lower(state, tokens, tokens, tokens)


def build_report(
    cfg: Qwen2Config,
    mesh: Mesh,
    dtype_name: str = "bfloat16",
    seq_len: int = DEFAULT_SEQ_LEN,
) -> PlanReport:
    """Lay `cfg` out on `mesh`, compile its forward for `seq_len` tokens per row with XLA:CPU, and report."""
    dtype = jnp.dtype(dtype_name)
    model_axis, batch = mesh.shape[MODEL_AXIS], mesh.shape[BATCH_AXIS]
    _, heads = tensor_parallel_config(cfg, model_axis)
    original = dict(
        nnx.to_flat_state(
            nnx.state(
                nnx.eval_shape(
                    lambda: Qwen2ForCausalLM(cfg, dtype=dtype, rngs=nnx.Rngs(0))
                )
            )
        )
    )

    rows: dict[str, list[int]] = {}
    strict_ideal = 0
    layouts: dict[str, str] = {}
    for path, variable in nnx.to_flat_state(
        nnx.state(abstract_model(cfg, dtype, mesh))
    ):
        sharding = variable.get_value().sharding
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
                f", {heads.pad_heads} zero pad heads"
                if module in ("q_proj", "o_proj") and heads.pad_heads
                else ""
            )
        else:
            ideal, layout = full, "replicated"
        strict_ideal += full // model_axis if split else full
        role = _role(path)
        acc = rows.setdefault(role, [0, 0])
        acc[0] += local
        acc[1] += ideal
        layouts[role] = layout

    params = [
        ParamRow(role, layouts[role], *rows[role])
        for role in sorted(rows, key=_role_key)
    ]
    compiled, collectives = compile_and_count(
        lower_forward(cfg, mesh, dtype_name, seq_len), CPU
    )
    memory = compiled.memory_analysis()
    per_device = sum(r.per_device_bytes for r in params)
    ideal = sum(r.ideal_per_device_bytes for r in params)
    all_reduces = collectives.pop("all_reduce", 0)
    all_gathers = collectives.pop("all_gather", 0)
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


def with_ttnn_collectives(
    report: PlanReport, cfg: Qwen2Config, tt_mesh: Mesh
) -> PlanReport:
    """`report` with the TTNN collectives of the same forward compiled by the TT plugin for `tt_mesh`."""
    _, collectives = compile_and_count(
        lower_forward(cfg, tt_mesh, report.dtype, report.seq_len), TT
    )
    return replace(
        report, ttnn_collectives={"all_reduce": 0, "all_gather": 0, **collectives}
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
    rows = [
        (r.role, r.layout, r.per_device_bytes, r.ideal_per_device_bytes)
        for r in report.params
    ]
    rows.append(
        (
            "total",
            "",
            report.per_device_param_bytes,
            report.ideal_per_device_param_bytes,
        )
    )
    lines += [
        f"{role:<38} {layout:<40} {_mib(local):>13} {_mib(ideal):>13}"
        for role, layout, local, ideal in rows
    ]
    layers = report.num_layers
    lines += [
        "",
        f"per-device parameters / ideal: {report.param_bytes_ratio:.4f} "
        f"(ideal = split parts / model axis + replicated parts, the KV heads GQA makes each device hold included; "
        f"{report.param_bytes_ratio_strict:.4f} against total / model axis)",
        f"all-reduces: {report.all_reduces} = {report.all_reduces_per_layer:g} per layer x {layers} + 1 (embedding)",
        f"all-gathers: {report.all_gathers}; other collectives: {report.other_collectives or 'none'}",
    ]
    if report.ttnn_collectives is not None:
        lines.append(f"TT plugin (TTNN): {report.ttnn_collectives}")
    lines += [
        f"temporary memory per device (forward, batch {report.batch} x {report.seq_len} tokens): "
        f"{_mib(report.temp_bytes_per_device)}",
    ]
    problems = report.check()
    lines.append(
        "plan holds" if not problems else "PLAN VIOLATED: " + "; ".join(problems)
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.jax.models.qwen2_5.plan",
        description=__doc__.split("\n")[0],
    )
    parser.add_argument("--mesh", required=True, help="BATCHxMODEL, e.g. 1x8")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument(
        "--seq-len",
        type=int,
        default=DEFAULT_SEQ_LEN,
        help="tokens per row for the temporary-memory figure",
    )
    parser.add_argument(
        "--device",
        choices=[CPU, TT],
        default=CPU,
        help="tt: also compile with the TT plugin and report its TTNN collectives (no card needed)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the report as one JSON object"
    )
    args = parser.parse_args(argv)

    try:
        shape = MeshShape.parse(args.mesh)
    except MeshError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.seq_len < 1:
        print("error: --seq-len must be >= 1", file=sys.stderr)
        return 2
    try:
        if args.device == TT and not has_card():
            enable_compile_only(lambda line: print(line, file=sys.stderr, flush=True))
        # Before the first device query starts a backend: enough simulated devices, and the
        # TT plugin only when asked for.
        configure_jax(cpu_devices=shape.size, platform=args.device)
        report = build_report(
            QWEN2_5_7B,
            make_mesh(shape, platform_devices(CPU)),
            args.dtype,
            args.seq_len,
        )
        if args.device == TT:
            report = with_ttnn_collectives(
                report, QWEN2_5_7B, make_mesh(shape, platform_devices(TT))
            )
    except (
        MeshError,
        TensorParallelError,
        TTPluginError,
        DeviceUnavailableError,
    ) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(asdict(report), indent=2) if args.json else format_report(report))
    return 0 if not report.check() else 1


if __name__ == "__main__":
    sys.exit(main())
