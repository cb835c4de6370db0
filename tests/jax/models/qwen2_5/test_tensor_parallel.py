# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""The tensor-parallel model on every mesh against the CPU single-device golden.

Op level (column- and row-parallel projections, vocab-parallel embedding), attention with
padded heads, one decoder layer, and full logits of a left-padded batch; plus the head split
for the Qwen2.5 family and the 7B plan compiled with shape-only weights.
"""

from __future__ import annotations

import functools
import json
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from tests.jax.infra.cli import run_cli, run_cli_calls
from tests.jax.infra.devices import CPU, TT, platform_devices
from tests.jax.infra.equivalence import (
    COMPILE_ONLY_PROPERTY,
    HOST_SIDE_PROPERTY,
    EquivalenceTester,
)
from tests.jax.infra.golden_check import Thresholds
from tests.jax.infra.mesh import MODEL_AXIS, MeshShape, make_mesh
from tests.jax.infra.runs import available_host_bytes
from tests.jax.models.qwen2_5 import model as model_module
from tests.jax.models.qwen2_5.audit import exact_model, oracle_tie_rule, ulp
from tests.jax.models.qwen2_5.config import QWEN2_5_7B, QWEN2_5_FAMILY, TINY_PRESETS
from tests.jax.models.qwen2_5.faults import AppendedPadding
from tests.jax.models.qwen2_5.loader import load_model
from tests.jax.models.qwen2_5.model import (
    Qwen2ForCausalLM,
    attention_bias,
    attention_mask,
    grouped_attention,
)
from tests.jax.models.qwen2_5.model import softmax as model_softmax
from tests.jax.models.qwen2_5.plan import (
    CHIP_DRAM,
    build_report,
    kv_cache_bytes_per_device,
    with_ttnn_collectives,
)
from tests.jax.models.qwen2_5.tensor_parallel import (
    ALL_REDUCES,
    TensorParallelError,
    forward_all_reduces,
    pad_model,
    shard_model,
    split_heads,
    tensor_parallel_config,
)
from tests.jax.models.qwen2_5.tt_forms import kernels_for
from tests.jax.models.qwen2_5.workloads import (
    hidden_rows,
    layer_inputs,
    left_padded_batch,
    module_workload,
    placed_like,
)

pytestmark = [pytest.mark.tensor_parallel, pytest.mark.model_test]
MESH_NAMES = ("2x4", "1x8", "1x32", "8x4")

# Measured over the four meshes and three presets (README, "Tensor parallelism"):
# float32 sharded vs single device differs by <= 3.5e-6 on logits (summation order of the
# all-reduce and of the per-device GEMMs); bfloat16 logits reach PCC >= 0.999997, most of them
# bitwise equal, the rest a rounding step apart, which can flip an argmax where the two best
# logits are that close (measured: 1 of 88 rows). Thresholds: 1e-4 / identical argmax for
# float32; for bfloat16 PCC 0.9999 and 100% top-1 where a flip counts only if the audit's rule
# calls it a rounding tie against the float32 oracle (audit.oracle_tie_rule).
OP_TOLERANCE = Thresholds(atol=1e-5)
FLOAT32_LOGITS = Thresholds(atol=1e-4, top1=1.0)


def logits_tolerance(golden, inputs, valid, dtype: str) -> Thresholds:
    """The logits tolerance; in bfloat16 with the tie rule judged by the golden's own oracle."""
    if dtype == "float32":
        return FLOAT32_LOGITS
    oracle = functools.cache(
        lambda: np.asarray(exact_model(golden)(*inputs), np.float64)[
            np.asarray(valid, bool)
        ]
    )

    def tie(
        golden_rows, actual_rows, expected, picked
    ):  # the oracle runs only where an argmax differs
        if np.array_equal(expected, picked):
            return np.zeros(len(expected), bool)
        return oracle_tie_rule(oracle(), dtype)(
            golden_rows, actual_rows, expected, picked
        )

    return Thresholds(pcc=0.9999, top1=1.0, top1_tie=tie)


# Eight rows so every batch axis (1, 2, 8) divides them; lengths cover full, short and tiny rows.
LENGTHS, SEQ_LEN = [16, 13, 9, 16, 4, 11, 7, 15], 16
PRESETS = pytest.mark.parametrize("preset", list(TINY_PRESETS))


@pytest.fixture(scope="module")
def golden_model(tiny_checkpoint):
    """(preset, dtype) -> the single-device model with the checkpoint's (random, non-trivial) weights."""

    @functools.cache
    def get(preset: str, dtype: str = "float32"):
        return load_model(tiny_checkpoint(preset), getattr(jnp, dtype))

    return get


def run_equivalence(
    golden_module,
    sharded_module,
    inputs,
    specs,
    mesh,
    dut,
    config,
    all_reduces,
    record_property,
    mask=None,
    output=None,
):
    """The sharded module against the golden one; its compiled program must hold exactly
    `all_reduces` all-reduces and nothing else (no weight is ever gathered)."""
    output = output or (lambda out: out)
    result = EquivalenceTester(config, dut).test(
        module_workload(golden_module, *inputs, output=output),
        module_workload(sharded_module, *inputs, output=output),
        arg_shardings=placed_like(sharded_module, mesh, *specs),
        mask=mask,
        collectives={"all_reduce": all_reduces},
    )
    for key, value in result.metrics().items():
        record_property(key, value)
    return result


def activations(width: int, seed: int = 3) -> np.ndarray:
    return (
        np.random.default_rng(seed)
        .standard_normal((len(LENGTHS), SEQ_LEN, width))
        .astype(np.float32)
    )


@pytest.mark.push
@pytest.mark.parametrize(
    ("projection", "input_spec"),
    [
        # column-parallel: replicated input, output split over `model`
        (
            "gate_proj",
            P("batch", None, None),
        ),
        # row-parallel: the input arrives split along its contraction axis, as the MLP hands it over
        ("down_proj", P("batch", None, MODEL_AXIS)),
    ],
    ids=["column_parallel", "row_parallel"],
)
def test_parallel_projection(
    projection, input_spec, mesh, golden_model, dut, record_property
):
    golden = golden_model("gqa28x4")
    sharded = shard_model(golden, mesh, kernels_for(dut.platform))
    module, sharded_module = (
        getattr(m.model.layers[0].mlp, projection) for m in (golden, sharded)
    )
    x = activations(module.weight.shape[1])
    kind = "column_parallel" if projection == "gate_proj" else "row_parallel"
    run_equivalence(
        module,
        sharded_module,
        (x,),
        (input_spec,),
        mesh,
        dut,
        OP_TOLERANCE,
        ALL_REDUCES[kind],
        record_property,
    )


@pytest.mark.push
def test_vocab_parallel_embedding(mesh, golden_model, dut, record_property):
    golden = golden_model("gqa28x4")
    sharded = shard_model(golden, mesh, kernels_for(dut.platform))
    batch = left_padded_batch(golden.cfg.vocab_size, LENGTHS, SEQ_LEN)
    # A lookup plus zeros from the other devices: exact (atol 0).
    run_equivalence(
        golden.model.embed_tokens,
        sharded.model.embed_tokens,
        (batch.input_ids,),
        (P("batch", None),),
        mesh,
        dut,
        Thresholds(atol=0.0),
        ALL_REDUCES["embedding"],
        record_property,
    )


def _attention_inputs(cfg):
    batch = left_padded_batch(cfg.vocab_size, LENGTHS, SEQ_LEN)
    inputs = layer_inputs(cfg, activations(cfg.hidden_size), batch, jnp.float32)
    specs = (P("batch", None),) + (P("batch", None, None, None),) * 3
    return batch, inputs, specs


# Every mesh for 7B's heads; the other presets on 1x8 (every mesh nightly).
@pytest.mark.push_where(preset="gqa28x4")
@pytest.mark.push_where(mesh="1x8")
@pytest.mark.nightly_unless(preset="gqa28x4", mesh="1x8")
@PRESETS
@pytest.mark.parametrize(
    ("module", "kind"),
    [
        (lambda m: m.model.layers[0].self_attn, "attention"),
        (lambda m: m.model.layers[1], "decoder_layer"),
    ],
    ids=["attention_with_padded_heads", "decoder_layer"],
)
def test_layer(module, kind, preset, mesh, golden_model, dut, record_property):
    golden = golden_model(preset)
    sharded = shard_model(golden, mesh, kernels_for(dut.platform))
    batch, inputs, specs = _attention_inputs(golden.cfg)
    run_equivalence(
        module(golden),
        module(sharded),
        inputs,
        specs,
        mesh,
        dut,
        OP_TOLERANCE,
        ALL_REDUCES[kind],
        record_property,
        mask=batch.valid,
        output=hidden_rows(*batch.input_ids.shape),
    )


# float32 on every mesh, bfloat16 on 1x8 (the trained model's logits: test_real_weights.py).
@pytest.mark.push_where(dtype="float32")
@pytest.mark.push_where(mesh="1x8")
@pytest.mark.nightly_unless(dtype="float32", mesh="1x8")
@PRESETS
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_logits(preset, dtype, mesh, golden_model, dut, record_property):
    golden = golden_model(preset, dtype)
    sharded = shard_model(golden, mesh, kernels_for(dut.platform))
    batch = left_padded_batch(golden.cfg.vocab_size, LENGTHS, SEQ_LEN)
    inputs = (batch.input_ids, batch.positions, batch.attention_mask)
    run_equivalence(
        golden,
        sharded,
        inputs,
        (P("batch", None),) * 3,
        mesh,
        dut,
        logits_tolerance(golden, inputs, batch.valid, dtype),
        forward_all_reduces(golden.cfg),
        record_property,
        mask=batch.valid,
    )


@pytest.mark.push
@PRESETS
def test_weights_are_laid_out_as_planned(preset, mesh, golden_model, record_property):
    """Each device holds whole (padded) query heads, its KV head(s), 1/m of the MLP and vocab."""
    record_property(*HOST_SIDE_PROPERTY)  # placement only: nothing is compiled
    golden = golden_model(preset)
    cfg, m = golden.cfg, mesh.shape[MODEL_AXIS]
    tp_cfg, heads = tensor_parallel_config(cfg, m)
    layer = shard_model(golden, mesh).model.layers[0]
    hd, d = cfg.head_dim, cfg.hidden_size
    expected = [
        (layer.self_attn.q_proj.weight, (heads.query_heads_per_device * hd, d)),
        (layer.self_attn.k_proj.weight, (tp_cfg.num_kv_heads // m * hd, d)),
        (layer.self_attn.o_proj.weight, (d, heads.query_heads_per_device * hd)),
        (layer.mlp.up_proj.weight, (cfg.intermediate_size // m, d)),
        (layer.mlp.down_proj.weight, (d, cfg.intermediate_size // m)),
        (layer.input_layernorm.weight, (d,)),
    ]
    for param, local_shape in expected:
        shards = param[...].addressable_shards
        assert {s.data.shape for s in shards} == {local_shape}
        assert len(shards) == mesh.size


@pytest.mark.push
@pytest.mark.parametrize(
    "heads", [(28, 4), (14, 2), (40, 8), (64, 8), (8, 8), (16, 2), (9, 3), (12, 3)]
)
@pytest.mark.parametrize("model_axis", [1, 2, 3, 4, 6, 8, 16, 32])
def test_head_split_gives_every_device_whole_heads_and_their_kv_head(heads, model_axis):
    """The property padding must keep, for any head count on any axis: every real query head
    still reads its own KV head, on the device that holds it."""
    num_heads, num_kv = heads
    split = split_heads(num_heads, num_kv, model_axis)
    assert (
        split.padded_heads % model_axis == 0 and split.stored_kv_heads % model_axis == 0
    )
    sources, kv_sources = split.query_sources(), split.kv_sources()
    queries_per_stored_kv = split.padded_heads // split.stored_kv_heads
    for head, source in enumerate(sources):
        stored_kv = head // queries_per_stored_kv  # the grouping attention applies
        # same device
        assert head // split.query_heads_per_device == stored_kv // (
            split.stored_kv_heads // model_axis
        )
        if source >= 0:
            assert kv_sources[stored_kv] == source // (num_heads // num_kv)
    assert sorted(s for s in sources if s >= 0) == list(range(num_heads))
    assert sorted(set(kv_sources) - {-1}) == list(range(num_kv))


@pytest.mark.push
@pytest.mark.parametrize(
    ("heads", "model_axis", "layout"),
    [
        # Qwen2.5-7B: no empty group; replicas and pad heads as before.
        ((28, 4), 4, (4, 1, 28)),
        ((28, 4), 8, (4, 2, 32)),
        ((28, 4), 32, (4, 8, 32)),
        # SmolLM2's 9:3: one empty group (3 -> 4 KV heads), then as 7B's.
        ((9, 3), 4, (4, 1, 12)),
        ((9, 3), 8, (4, 2, 16)),
        ((9, 3), 32, (4, 8, 32)),
        # 28:4 on 3 devices: two empty groups; replicating 4 over 3 is impossible.
        ((28, 4), 3, (6, 1, 42)),
    ],
)
def test_head_layouts(heads, model_axis, layout):
    """(padded KV heads, replicas, padded query heads) of the least padding."""
    split = split_heads(*heads, model_axis)
    assert (split.padded_kv_heads, split.kv_replicas, split.padded_heads) == layout


@pytest.mark.push
def test_mlp_width_must_divide():
    with pytest.raises(
        TensorParallelError,
        match="intermediate_size 1000 is not divisible by the model axis 32",
    ):
        tensor_parallel_config(
            TINY_PRESETS["gqa28x4"].replace(intermediate_size=1000), 32
        )


@pytest.mark.push
def test_grouped_padding_is_exact_and_appended_padding_is_not(golden_model):
    """7B's 28:4 heads padded for 8 devices. Grouped: pad heads have zero q and zero o_proj rows,
    so the output is unchanged. Appended: heads 7..27 shift into the wrong GQA group (head 7
    now reads KV head 0 instead of 1), so the output is wrong."""
    golden = golden_model("gqa28x4")
    split = split_heads(28, 4, 8)
    batch = left_padded_batch(golden.cfg.vocab_size, LENGTHS, SEQ_LEN)

    def logits(model):
        return np.asarray(
            model(batch.input_ids, batch.positions, batch.attention_mask)
        )[batch.valid]

    reference = logits(golden)
    grouped = logits(pad_model(golden, split))
    appended = logits(pad_model(golden, AppendedPadding(**vars(split))))
    assert np.abs(grouped - reference).max() < 1e-5
    assert np.abs(appended - reference).max() > 1e-2


@pytest.mark.push
@pytest.mark.parametrize("model_axis", [4, 8, 32])
def test_empty_kv_groups_are_exact(model_axis):
    """SmolLM2's 9:3 heads on model axes that divide neither: an empty group's KV head is zero and
    its query heads are pad heads, so the padded model computes the unpadded one's logits. Where
    groups also hold pad heads (8, 32), the same heads appended are off (the test can fail).
    """
    cfg = TINY_PRESETS["gqa28x4"].replace(num_heads=9, num_kv_heads=3, head_dim=16)
    model = Qwen2ForCausalLM(cfg, rngs=nnx.Rngs(3))
    split = split_heads(9, 3, model_axis)
    assert split.padded_kv_heads == 4
    batch = left_padded_batch(cfg.vocab_size, LENGTHS, SEQ_LEN)
    inputs = (batch.input_ids, batch.positions, batch.attention_mask)
    reference = np.asarray(model(*inputs))[batch.valid]
    padded = np.asarray(pad_model(model, split)(*inputs))[batch.valid]
    assert np.abs(padded - reference).max() < 1e-5
    if split.padded_group > split.group:
        appended = pad_model(model, AppendedPadding(**vars(split)))(*inputs)
        assert np.abs(np.asarray(appended)[batch.valid] - reference).max() > 1e-2


@pytest.mark.push
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_query_blocks_change_no_result(dtype, monkeypatch):
    """Attention over blocks of queries gives every query the output it gets among all of them, at
    a size where the matrix library runs the products (200 queries over 1,024 slots): blocks of
    32 and of 128 (the last padded: 7 x 32 = 224, 2 x 128 = 256) against one block. Bit for bit
    with current XLA; where XLA sums a block's products in another order (jax 0.7.1, tt-xla's
    pin), within the bound on float32 recursive summation of the S probability-weighted values
    (S u max|v|, the weights summing to one) and one rounding to the dtype. A block that mixed
    queries or kept a padded row would move outputs by far more."""
    batch, kv, groups, seq, slots, hd = 2, 2, 7, 200, 1024, 64
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (batch, kv * groups, seq, hd), getattr(jnp, dtype))
    k, v = (jax.random.normal(key, (batch, kv, slots, hd), q.dtype) for key in keys[1:])
    key_valid = jnp.arange(slots)[None] >= jnp.array([[0], [300]])  # row 1 left-padded
    bias = attention_bias(attention_mask(key_valid, slots - seq, seq), q.dtype)
    per_query = 4 * batch * kv * groups * slots  # float32 score bytes

    def attend(queries_per_block: int) -> np.ndarray:
        monkeypatch.setattr(
            model_module, "SCORE_BLOCK_BYTES", queries_per_block * per_query
        )
        grouped_shape = (batch, kv, groups, seq, hd)
        assert model_module._query_block(grouped_shape, slots) == queries_per_block
        attention = functools.partial(
            grouped_attention,
            scale=hd**-0.5,
            is_causal=False,
            softmax=model_softmax,
        )
        return np.asarray(jax.jit(attention)(q, k, v, bias).astype(jnp.float32))

    whole = attend(seq)
    bound = slots * 2.0**-24 * float(jnp.abs(v).max()) + ulp(np.abs(whole), dtype)
    for block in (32, 128):
        assert np.all(np.abs(attend(block) - whole) <= bound)


@pytest.mark.push
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_causal_blocks_skip_only_hidden_keys(dtype):
    """Causal attention over a call's own tokens (a forward without a cache, a first prefill
    chunk) in blocks of CAUSAL_BLOCK queries, each against the keys up to its last query, against
    one block over all keys: 600 queries (3 blocks, the last partial), one row left-padded by 100.
    Every query that sees a key gets the same output up to summation order: the skipped keys have
    weight exactly 0, and two float32 orders of S terms differ by at most 8 S eps32 max|v| (the
    softmax's sum and the weighted sum, each side); in bfloat16, probabilities rounded on either
    side of a tie add 2^-8 max|v| and the output's own rounding one more. In float32, hiding the
    last block's queries' own keys (one key of 513-600 each) misses that bound; in bfloat16, whose
    bound is wider, hiding every query's own key does.
    """
    batch, kv, groups, seq, hd = 2, 2, 7, 600, 64
    keys = jax.random.split(jax.random.key(1), 3)
    q = jax.random.normal(keys[0], (batch, kv * groups, seq, hd), getattr(jnp, dtype))
    k, v = (jax.random.normal(key, (batch, kv, seq, hd), q.dtype) for key in keys[1:])
    key_valid = jnp.arange(seq)[None] >= jnp.array([[0], [100]])
    visible = attention_mask(key_valid, 0, seq)  # (B, T, T)
    sees = np.asarray(visible.any(-1))  # (B, T): queries that see some key

    def attend(visible: jax.Array, causal: bool) -> np.ndarray:
        attention = functools.partial(
            grouped_attention,
            scale=hd**-0.5,
            is_causal=False,
            softmax=model_softmax,
            causal=causal,
        )
        bias = attention_bias(visible, q.dtype)
        out = jax.jit(attention)(q, k, v, bias).astype(jnp.float32)
        return np.asarray(out).transpose(0, 2, 1, 3)[sees]  # (queries, Hq, H)

    assert seq > model_module.CAUSAL_BLOCK * 2
    whole, blocked = attend(visible, False), attend(visible, True)
    v_max = float(jnp.abs(v.astype(jnp.float32)).max())
    bound = 8 * seq * np.finfo(np.float32).eps * v_max
    if dtype == "bfloat16":
        bound += 2 * 2.0**-8 * v_max
    assert np.abs(blocked - whole).max() <= bound
    faulty = 2 * model_module.CAUSAL_BLOCK if dtype == "float32" else 0
    hidden = jnp.eye(seq, dtype=bool) & (jnp.arange(seq) >= faulty)[:, None]
    no_diagonal = visible & ~hidden[None]
    # a row's first real query sees only its own key: it keeps it, so every query sees one
    no_diagonal = no_diagonal.at[0, 0, 0].set(True).at[1, 100, 100].set(True)
    assert np.abs(attend(no_diagonal, True) - whole).max() > bound


@pytest.mark.nightly  # the plan CLI checks 1x8 in the default run (test_plan_cli_json)
def test_7b_plan_on_mesh(mesh, dut, record_property):
    """Real 7B shapes, no weights: bytes within 5% of ideal, 2 all-reduces per layer, no all-gather,
    on XLA:CPU and, with --device tt, in the TT plugin's TTNN program too."""
    shape = MeshShape(mesh.shape["batch"], mesh.shape["model"])
    report = build_report(
        QWEN2_5_7B, make_mesh(shape, platform_devices(CPU)), "bfloat16", seq_len=256
    )
    if dut.platform == TT:
        report = with_ttnn_collectives(report, QWEN2_5_7B, mesh)
        assert report.ttnn_collectives == {"all_reduce": 57, "all_gather": 0}
    for key in (
        "param_bytes_ratio",
        "param_bytes_ratio_strict",
        "all_reduces",
        "temp_bytes_per_device",
    ):
        record_property(key, getattr(report, key))
    assert report.check() == []
    assert report.param_bytes_ratio <= 1.05
    assert report.all_reduces == 2 * 28 + 1 and report.all_gathers == 0


def _plan_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_cli("tests.jax.models.qwen2_5.plan", *args, timeout=timeout)


def test_plan_cli_json():
    done = _plan_cli("--mesh", "1x8", "--json", "--seq-len", "64")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (
        report["mesh"] == "1x8"
        and report["all_reduces"] == 57
        and report["all_gathers"] == 0
    )
    assert report["query_heads"].startswith("28 -> 32")


def test_plan_cli_reports_the_tt_compilers_collectives(dut, record_property):
    """`plan --device tt`: the full 28-layer 7B compiled by the TT plugin too (no card needed)."""
    if dut.platform != TT:
        pytest.skip(
            "compiles with the TT plugin: run with --device tt (--tt-compile-only without a card)"
        )
    args = ("--mesh", "1x8", "--device", "tt", "--json", "--seq-len", "64")
    done = _plan_cli(*args, timeout=900)
    record_property(*COMPILE_ONLY_PROPERTY)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert (
        report["ttnn_collectives"] == {"all_reduce": 57, "all_gather": 0}
        and report["all_reduces"] == 57
    )
    # The full 28-layer decode step: the cache updated in place, and the per-layer goal.
    decode, prefill = report["ttnn_graph"]["decode"], report["ttnn_graph"]["prefill"]
    record_property("ttnn_decode", decode)
    record_property("ttnn_prefill", prefill)
    assert decode["ttnn_cache_updates"] == 56 and decode["ttnn_generic_scatters"] == 0
    assert decode["ttnn_ops_per_layer"]["total"] <= 40
    assert decode["ttnn_ops_per_layer"]["data_movement"] <= 15
    assert decode["ttnn_hoisted_to_cpu"] == prefill["ttnn_hoisted_to_cpu"] == 0
    assert report["ttnn_graph_problems"] == []


BAD_MESHES = [
    ("1x3", "is not divisible by the model axis 3"),
    ("8by4", "malformed mesh"),
    ("0x8", "zero-sized axis"),
]


@pytest.fixture(scope="module")
def bad_mesh_plans():
    """The plan command on each bad mesh, all in one fresh process."""
    calls = [(["--mesh", mesh_arg], {}) for mesh_arg, _ in BAD_MESHES]
    return run_cli_calls(
        "tests.jax.models.qwen2_5.plan", calls, {"JAX_NUM_CPU_DEVICES": "8"}
    )


@pytest.mark.parametrize(
    "case", range(len(BAD_MESHES)), ids=[f"{m}-{why}" for m, why in BAD_MESHES]
)
def test_plan_cli_bad_mesh(case, bad_mesh_plans):
    done = bad_mesh_plans[case]
    assert done.returncode == 2
    assert BAD_MESHES[case][1] in done.stderr and "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def wide_golden():
    """Qwen2.5-7B's real widths with 2 layers, random bfloat16 weights; biases and norms random too."""
    cfg = QWEN2_5_7B.replace(num_layers=2)
    graphdef, state = nnx.split(
        Qwen2ForCausalLM(cfg, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    )
    keys = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(state))))

    def randomize(path, x):
        noise = jax.random.normal(next(keys), x.shape, jnp.float32)
        leaf = str(path[-1].key if hasattr(path[-1], "key") else path[-1])
        if leaf == "weight" and x.ndim == 1:  # norms
            return (1.0 + 0.1 * noise).astype(x.dtype)
        return (0.1 * noise if leaf == "bias" else 0.03 * noise).astype(x.dtype)

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(randomize, state))


@pytest.mark.nightly
def test_7b_width_logits(mesh, wide_golden, dut, record_property):
    """Full 7B widths (3584 hidden, 18944 MLP, 28:4 heads of 128, 152064 vocab), 2 layers, bfloat16."""
    if dut.platform == CPU:
        # Simulated devices share host memory: every `batch` row of the mesh holds a full copy.
        weights = sum(x.nbytes for x in jax.tree.leaves(nnx.state(wide_golden)))
        need, have = int(1.1 * weights * mesh.shape["batch"]), available_host_bytes()
        if need > have:
            pytest.skip(
                f"the {mesh.shape['batch']} batch replicas of the 7B-width weights need {need / 2**30:.1f} GiB of "
                f"host memory, {have / 2**30:.1f} GiB is available (on real devices each replica has its own)"
            )
    batch = left_padded_batch(
        QWEN2_5_7B.vocab_size, [32, 27, 19, 32, 6, 23, 12, 30], 32
    )
    inputs = (batch.input_ids, batch.positions, batch.attention_mask)
    run_equivalence(
        wide_golden,
        shard_model(wide_golden, mesh, kernels_for(dut.platform)),
        inputs,
        (P("batch", None),) * 3,
        mesh,
        dut,
        logits_tolerance(wide_golden, inputs, batch.valid, "bfloat16"),
        forward_all_reduces(wide_golden.cfg),
        record_property,
        mask=batch.valid,
    )


@pytest.mark.parametrize("mesh_name", MESH_NAMES)
@pytest.mark.parametrize("name", list(QWEN2_5_FAMILY))
def test_every_qwen2_5_size_splits_on_every_mesh(name, mesh_name):
    """Each size's heads, MLP and vocabulary split over every mesh's model axis, with every device
    holding whole heads and the KV head they read."""
    cfg = QWEN2_5_FAMILY[name]
    model_axis = MeshShape.parse(mesh_name).model
    tp_cfg, split = tensor_parallel_config(cfg, model_axis)
    assert (
        split.padded_heads % model_axis == 0 and split.stored_kv_heads % model_axis == 0
    )
    assert cfg.intermediate_size % model_axis == 0 and cfg.vocab_size % model_axis == 0


@pytest.mark.parametrize(
    ("name", "mesh_name", "rows", "mib"),
    # 7B, 1x8: 28 layers x (K, V) x 1 row x 1 stored KV head x 32,768 slots x 128 x 2 bytes.
    # 72B, 8x4: 80 layers x 2 x 4 rows x 2 KV heads x 32,768 x 128 x 2 bytes = 10 GiB.
    [("7B", "1x8", 1, 448), ("72B", "8x4", 32, 10 * 1024)],
)
def test_kv_cache_bytes_per_device(name, mesh_name, rows, mib):
    mesh = make_mesh(mesh_name, platform_devices(CPU))
    cfg = QWEN2_5_FAMILY[name]
    assert (
        kv_cache_bytes_per_device(cfg, mesh, jnp.bfloat16, 32768, rows) == mib * 2**20
    )


@pytest.mark.nightly
def test_plan_cli_for_another_size():
    done = _plan_cli("--mesh", "1x8", "--model", "0.5B", "--json", "--seq-len", "64")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["model"] == "0.5B" and report["num_layers"] == 24
    assert report["fits"] == {chip: True for chip in CHIP_DRAM}
    assert report["kv_cache_bytes_per_device"] > 0


@pytest.mark.nightly
@pytest.mark.parametrize("mesh_name", MESH_NAMES)
@pytest.mark.parametrize("name", list(QWEN2_5_FAMILY))
def test_plan_cli_for_every_size_and_mesh(name, mesh_name):
    done = _plan_cli("--mesh", mesh_name, "--model", name, "--json")
    assert done.returncode == 0, done.stderr
    assert (
        json.loads(done.stdout)["all_reduces"]
        == 2 * QWEN2_5_FAMILY[name].num_layers + 1
    )
