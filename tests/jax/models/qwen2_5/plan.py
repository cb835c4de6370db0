# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""The tensor-parallel plan of a Qwen2.5 model on a mesh, verified by compiling it with shape-only weights.

    python -m tests.jax.models.qwen2_5.plan --mesh 1x32 [--model 7B] [--context N] [--batch B]
        [--device tt] [--json]

No weights are needed: the forward pass is lowered and compiled for abstract (shape, dtype,
sharding) parameters, and the compiled HLO is read back for its collectives and memory. Each
device's bytes (its weights and its share of a KV cache of --context slots for --batch rows) are
set against one chip's DRAM. With --device tt the same forward is also compiled by the TT plugin
(no card needed: a mock system descriptor is made once per plugin version), its TTNN collectives
are reported beside, and so are the TTNN graphs of the model's prefill chunk and decode step
(tt_graph): ops per decoder layer, in-place cache updates, generic scatters.
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

from tests.jax.infra.cli import own_stdout
from tests.jax.infra.collectives import compile_and_count
from tests.jax.infra.compat import value_of
from tests.jax.infra.devices import (
    CPU,
    TT,
    DeviceUnavailableError,
    configure_jax,
    platform_devices,
)
from tests.jax.infra.mesh import BATCH_AXIS, MODEL_AXIS, MeshError, MeshShape, make_mesh
from tests.jax.infra.tt_plugin import TTPluginError, enable_compile_only, has_card
from tests.jax.models.qwen2_5.config import QWEN2_5_FAMILY, Qwen2Config
from tests.jax.models.qwen2_5.tensor_parallel import (
    HeadSplit,
    TensorParallelError,
    abstract_model,
    batch_sharding,
    model_shapes,
    tensor_parallel_config,
)
from tests.jax.models.qwen2_5.tt_graph import step_graphs

DEFAULT_SEQ_LEN = 1024
GIB = 2**30
# One chip's DRAM, as the boards are sold (an n300 carries two Wormhole chips of 12 GB each).
CHIP_DRAM = {
    "Blackhole p150": 32 * GIB,
    "Wormhole n150": 12 * GIB,
    "Wormhole n300 (per chip)": 12 * GIB,
}


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
    model: str = "7B"
    # A KV cache of `context` slots for `kv_batch` rows: what each device holds of it.
    context: int = 0
    kv_batch: int = 0
    kv_cache_bytes_per_device: int = 0
    # Per chip, whether its DRAM holds one device's weights and KV cache.
    fits: dict[str, bool] | None = None
    # The same forward compiled by the TT plugin (plan --device tt): its TTNN collectives.
    ttnn_collectives: dict[str, int] | None = None
    # plan --device tt: the prefill chunk's and decode step's TTNN graphs (tt_graph.StepGraph.summary).
    ttnn_graph: dict[str, dict] | None = None
    ttnn_graph_problems: list[str] | None = None

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
        return problems + list(self.ttnn_graph_problems or [])

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


def _layout(
    module: str, split: bool, heads: HeadSplit, full: int, model_axis: int
) -> tuple[int, str]:
    """A parameter's ideal bytes per device and its layout in words."""
    if module in ("k_proj", "v_proj") and heads.kv_replicas > 1:
        # GQA forces it: a device needs the whole KV head its queries read.
        layout = f"split by KV head, each replicated {heads.kv_replicas}x"
        return full // heads.num_kv_heads, layout
    if split:
        pads = module in ("q_proj", "o_proj") and heads.pad_heads
        return full // model_axis, "split over model" + (
            f", {heads.pad_heads} zero pad heads" if pads else ""
        )
    return full, "replicated"


def _param_rows(
    cfg: Qwen2Config, mesh: Mesh, dtype: jnp.dtype, heads: HeadSplit
) -> tuple[list[ParamRow], int]:
    """One row per kind of parameter (bytes per device against ideal), and the strict ideal:
    every split parameter over the axis, the rest whole."""
    model_axis = mesh.shape[MODEL_AXIS]
    original = dict(nnx.to_flat_state(nnx.state(model_shapes(cfg, dtype=dtype))))
    rows: dict[str, list[int]] = {}
    layouts: dict[str, str] = {}
    strict_ideal = 0
    for path, variable in nnx.to_flat_state(
        nnx.state(abstract_model(cfg, dtype, mesh))
    ):
        value = value_of(variable)
        local = int(np.prod(value.sharding.shard_shape(value.shape))) * dtype.itemsize
        full = int(np.prod(value_of(original[path]).shape)) * dtype.itemsize
        split = MODEL_AXIS in [a for a in value.sharding.spec if a]
        ideal, layout = _layout(str(path[-2]), split, heads, full, model_axis)
        strict_ideal += full // model_axis if split else full
        role = _role(path)
        acc = rows.setdefault(role, [0, 0])
        acc[0], acc[1], layouts[role] = acc[0] + local, acc[1] + ideal, layout
    params = [ParamRow(r, layouts[r], *rows[r]) for r in sorted(rows, key=_role_key)]
    return params, strict_ideal


def build_report(
    cfg: Qwen2Config,
    mesh: Mesh,
    dtype_name: str = "bfloat16",
    seq_len: int = DEFAULT_SEQ_LEN,
) -> PlanReport:
    """Lay `cfg` out on `mesh`, compile its forward for `seq_len` tokens per row with XLA:CPU, and report."""
    model_axis, batch = mesh.shape[MODEL_AXIS], mesh.shape[BATCH_AXIS]
    _, heads = tensor_parallel_config(cfg, model_axis)
    params, strict_ideal = _param_rows(cfg, mesh, jnp.dtype(dtype_name), heads)
    lowered = lower_forward(cfg, mesh, dtype_name, seq_len)
    compiled, collectives, _ = compile_and_count(lowered, CPU)
    memory = compiled.memory_analysis()
    per_device = sum(r.per_device_bytes for r in params)
    ideal = sum(r.ideal_per_device_bytes for r in params)
    all_reduces = collectives.pop("all_reduce", 0)
    return PlanReport(
        mesh=f"{batch}x{model_axis}",
        dtype=dtype_name,
        num_layers=cfg.num_layers,
        query_heads=f"{cfg.num_heads} -> {heads.padded_heads} ({heads.query_heads_per_device} per device)",
        kv_heads=f"{cfg.num_kv_heads} -> {heads.stored_kv_heads} ({heads.kv_heads_per_device} per device)",
        params=params,
        per_device_param_bytes=per_device,
        ideal_per_device_param_bytes=ideal,
        param_bytes_ratio=per_device / ideal,
        param_bytes_ratio_strict=per_device / strict_ideal,
        all_reduces=all_reduces,
        all_reduces_per_layer=(all_reduces - 1) / cfg.num_layers,
        all_gathers=collectives.pop("all_gather", 0),
        other_collectives=dict(collectives),
        temp_bytes_per_device=int(memory.temp_size_in_bytes) if memory else -1,
        seq_len=seq_len,
        batch=batch,
    )


def kv_cache_bytes_per_device(
    cfg: Qwen2Config, mesh: Mesh, dtype: jnp.dtype, context: int, rows: int
) -> int:
    """Bytes one device holds of the KV cache of `context` slots for `rows` rows: its rows (split
    over `batch`) of its stored KV heads (split over `model`), keys and values, every layer.
    """
    tp_cfg, heads = tensor_parallel_config(cfg, mesh.shape[MODEL_AXIS])
    local_rows = -(-rows // mesh.shape[BATCH_AXIS])
    local_heads = heads.stored_kv_heads // mesh.shape[MODEL_AXIS]
    per_layer = 2 * local_rows * local_heads * context * tp_cfg.head_dim
    return per_layer * cfg.num_layers * jnp.dtype(dtype).itemsize


def with_device_bytes(
    report: PlanReport, cfg: Qwen2Config, mesh: Mesh, context: int, rows: int
) -> PlanReport:
    """`report` with each device's KV cache of `context` slots for `rows` rows, and per chip
    whether one device's weights and cache fit its DRAM."""
    cache = kv_cache_bytes_per_device(cfg, mesh, jnp.dtype(report.dtype), context, rows)
    held = report.per_device_param_bytes + cache
    fits = {chip: held <= dram for chip, dram in CHIP_DRAM.items()}
    return replace(
        report,
        context=context,
        kv_batch=rows,
        kv_cache_bytes_per_device=cache,
        fits=fits,
    )


def with_ttnn_graph(report: PlanReport, cfg: Qwen2Config, tt_mesh: Mesh) -> PlanReport:
    """`report` with the TTNN graphs of `cfg`'s prefill chunk and decode step on `tt_mesh`."""
    graphs = step_graphs(cfg, tt_mesh, jnp.dtype(report.dtype))
    problems = [f"{kind}: {p}" for kind, g in graphs.items() for p in g.problems()]
    summary = {kind: g.summary() for kind, g in graphs.items()}
    return replace(report, ttnn_graph=summary, ttnn_graph_problems=problems)


def with_ttnn_collectives(
    report: PlanReport, cfg: Qwen2Config, tt_mesh: Mesh
) -> PlanReport:
    """`report` with the TTNN collectives of the same forward compiled by the TT plugin for `tt_mesh`."""
    _, collectives, _ = compile_and_count(
        lower_forward(cfg, tt_mesh, report.dtype, report.seq_len), TT
    )
    return replace(
        report, ttnn_collectives={"all_reduce": 0, "all_gather": 0, **collectives}
    )


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def format_report(report: PlanReport) -> str:
    lines = [
        f"Qwen2.5-{report.model} on mesh {report.mesh} (batch x model), {report.dtype}, "
        f"{report.num_layers} layers",
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
    lines += _memory_lines(report) + _ttnn_graph_lines(report)
    problems = report.check()
    lines.append(
        "plan holds" if not problems else "PLAN VIOLATED: " + "; ".join(problems)
    )
    return "\n".join(lines)


def _memory_lines(report: PlanReport) -> list[str]:
    if report.fits is None:
        return []
    held = report.per_device_param_bytes + report.kv_cache_bytes_per_device
    fits = ", ".join(
        f"{chip} {'yes' if ok else 'NO'}" for chip, ok in report.fits.items()
    )
    return [
        f"KV cache for {report.kv_batch} rows x {report.context:,} slots: "
        f"{_mib(report.kv_cache_bytes_per_device)} per device; with the weights "
        f"{held / GIB:.2f} GiB per device; fits one chip's DRAM: {fits}",
    ]


def _ttnn_graph_lines(report: PlanReport) -> list[str]:
    lines = []
    for kind, graph in (report.ttnn_graph or {}).items():
        per_layer = graph["ttnn_ops_per_layer"]
        lines.append(
            f"TTNN {kind}: {per_layer['total']} ops per decoder layer "
            f"({per_layer['data_movement']} reshape/to_layout/typecast/permute), "
            f"{graph['ttnn_cache_updates']} in-place cache updates, "
            f"{graph['ttnn_generic_scatters']} generic scatters, "
            f"{graph['ttnn_hoisted_to_cpu']} functions on the host; {graph['ttnn_ops']} ops in all"
        )
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.jax.models.qwen2_5.plan",
        description=__doc__.split("\n")[0],
    )
    parser.add_argument("--mesh", required=True, help="BATCHxMODEL, e.g. 1x8")
    parser.add_argument("--model", choices=list(QWEN2_5_FAMILY), default="7B")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument(
        "--seq-len",
        type=int,
        default=DEFAULT_SEQ_LEN,
        help="tokens per row for the temporary-memory figure",
    )
    parser.add_argument(
        "--context",
        type=int,
        help="KV-cache slots per row (default: the model's context)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        help="KV-cache rows (default: one per batch group of the mesh)",
    )
    parser.add_argument(
        "--device",
        choices=[CPU, TT],
        default=CPU,
        help="tt: also compile with the TT plugin and report its TTNN collectives and graphs "
        "(no card needed)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the report as one JSON object"
    )
    return parser.parse_args(argv)


def plan(args: argparse.Namespace, shape: MeshShape) -> PlanReport:
    """The report the arguments ask for (JAX not yet started)."""
    cfg = QWEN2_5_FAMILY[args.model]
    if args.device == TT and not has_card():
        enable_compile_only(lambda line: print(line, file=sys.stderr, flush=True))
    # Before the first device query starts a backend: enough simulated devices, and the
    # TT plugin only when asked for.
    configure_jax(cpu_devices=shape.size, platform=args.device)
    mesh = make_mesh(shape, platform_devices(CPU))
    report = replace(
        build_report(cfg, mesh, args.dtype, args.seq_len), model=args.model
    )
    context = args.context or cfg.max_position_embeddings
    report = with_device_bytes(report, cfg, mesh, context, args.batch or shape.batch)
    if args.device == TT:
        tt_mesh = make_mesh(shape, platform_devices(TT))
        report = with_ttnn_graph(
            with_ttnn_collectives(report, cfg, tt_mesh), cfg, tt_mesh
        )
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The TT plugin's device logs go to file descriptor 1.
    out = own_stdout() if args.device == TT else sys.stdout
    try:
        shape = MeshShape.parse(args.mesh)
        for name in ("seq_len", "context", "batch"):
            value = getattr(args, name)
            if value is not None and value < 1:
                raise MeshError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        report = plan(args, shape)
    except (
        MeshError,
        TensorParallelError,
        TTPluginError,
        DeviceUnavailableError,
    ) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        json.dumps(asdict(report), indent=2) if args.json else format_report(report),
        file=out,
        flush=True,
    )
    return 0 if not report.check() else 1


if __name__ == "__main__":
    sys.exit(main())
