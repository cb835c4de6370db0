# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""A trained model: SmolLM2-135M-Instruct run as Qwen2 (zero q/k/v biases, smollm2.py).

The conversion against transformers' own reading of the GGUF; logits against Hugging Face on one
device; every mesh against one device (9 query and 3 KV heads divide none of the model axes 4, 8
and 32: empty KV groups, tensor_parallel.py); greedy generation against Hugging Face. Trained
weights bring what random ones lack: residual channels of 2e4 and top-2 logits a rounding apart.

Tolerances are judged against an exact answer (golden_check.Oracle), so no number measured on
one host enters them: in float32 Hugging Face in float64, in bfloat16 the model's own weights
computed in float32 (audit.exact_model).
"""

from __future__ import annotations

import functools
import math

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.sharding import PartitionSpec as P
from safetensors.numpy import load_file
from transformers import AutoTokenizer

from tests.jax.infra.devices import TT, golden_device
from tests.jax.infra.equivalence import EquivalenceTester, run_on_device
from tests.jax.infra.golden_check import Oracle, Thresholds
from tests.jax.models.qwen2_5.audit import ACCURACY_FACTOR, exact_model, oracle_tie_rule
from tests.jax.models.qwen2_5.faults import CATALOG
from tests.jax.models.qwen2_5.generation import Generator
from tests.jax.models.qwen2_5.hf_golden import (
    exact_logits,
    hf_greedy,
    load_hf,
    load_hf_gguf,
    to_numpy,
    to_torch,
)
from tests.jax.models.qwen2_5.loader import SINGLE_FILE, load_model
from tests.jax.models.qwen2_5.pipeline import Checkpoint
from tests.jax.models.qwen2_5.sampling import SamplingConfig
from tests.jax.models.qwen2_5.smollm2 import NAME as SMOLLM2
from tests.jax.models.qwen2_5.smollm2 import gguf_path
from tests.jax.models.qwen2_5.step_checks import compiles_as_planned
from tests.jax.models.qwen2_5.steps import DECODE, DECODE_ROWS, PREFILL
from tests.jax.models.qwen2_5.tensor_parallel import (
    abstract_model,
    forward_all_reduces,
    shard_model,
)
from tests.jax.models.qwen2_5.test_audit import Audited, check_fault
from tests.jax.models.qwen2_5.tt_forms import TT_FORMS, kernels_for
from tests.jax.models.qwen2_5.workloads import Batch, module_workload, placed_like

pytestmark = [pytest.mark.model_test]
MODEL_NAME = SMOLLM2

# Eight rows, so every batch axis (1, 2, 8) divides them: prose, code, digits, a chat turn.
TEXTS = [
    "The capital of France is",
    "Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many "
    "clips in May. How many clips did Natalia sell altogether in April and May?\nAnswer:",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the sea,",
    "The derivative of x^2 + 3x is",
    "Water boils at 100 degrees Celsius, and it freezes at",
    "<|im_start|>user\nWhat is 12 times 7?<|im_end|>\n<|im_start|>assistant\n",
    "Paris, London, Berlin and",
]
NEW_TOKENS = 32
NEEDS_DATA = "measures outputs: a compile-only device holds none (test_steps_compile_for_tt_on_every_mesh compiles them)"
TT_ONLY = "compiles with the TT plugin: run with --device tt (--tt-compile-only without a card)"
# Two correct float32 products differ only in summation order. Summed in sequence, K terms of
# scale s carry a rounding error of RMS ~ u K s / sqrt(24); summed pairwise, u s sqrt(K log2 K / 12),
# and every library's blocking lies between: one correct library may be off by up to
# sqrt(K / (2 log2 K)) times another's, 8.5 at SmolLM2's widest contraction (K = 1536). XLA:CPU
# sums in sequence, PyTorch's CPU GEMM in blocks: measured 1.9x over the whole model.
FLOAT32_LIBRARIES = math.sqrt(1536 / (2 * math.log2(1536)))
# Same cast points on both sides (Hugging Face's and ours), so in bfloat16 the errors are the
# roundings at those points, distributed alike: the audit's factor.
AGAINST_HF = {"float32": FLOAT32_LIBRARIES, "bfloat16": ACCURACY_FACTOR}


@pytest.fixture(scope="module")
def checkpoint(smollm2) -> Checkpoint:
    return Checkpoint.open(smollm2)


@pytest.fixture(scope="module")
def prompts(checkpoint) -> list[list[int]]:
    return [checkpoint.tokenizer(t)["input_ids"] for t in TEXTS]


@pytest.fixture(scope="module")
def batch(prompts, checkpoint) -> Batch:
    """TEXTS left-padded with the pad token, positions counted from each row's first token."""
    width = max(map(len, prompts))
    ids = np.full((len(prompts), width), checkpoint.pad_token_id, np.int32)
    mask = np.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :], mask[row, width - len(p) :] = p, 1
    return Batch(ids, mask, np.maximum(np.cumsum(mask, -1) - 1, 0).astype(np.int32))


@pytest.fixture(scope="module")
def ours(smollm2):
    return functools.cache(lambda dtype: load_model(smollm2, getattr(jnp, dtype)))


@pytest.fixture(scope="module")
def exact(smollm2, prompts, batch, ours):
    """dtype -> the exact logits of the batch's real rows (n, V): float64 Hugging Face for
    float32 weights, our model's own bfloat16 weights in float32 for bfloat16."""

    @functools.cache
    def get(dtype: str) -> np.ndarray:
        if dtype == "float32":
            return np.concatenate(exact_logits(smollm2, prompts))
        logits = exact_model(ours(dtype))(*inputs(batch))
        return np.asarray(logits, np.float64)[batch.valid]

    return get


@pytest.fixture(scope="module")
def golden_logits(batch, ours):
    """dtype -> one device's logits of the batch (the golden of every mesh), computed once."""

    @functools.cache
    def get(dtype: str) -> np.ndarray:
        return run_on_device(
            module_workload(ours(dtype), *inputs(batch)), golden_device()
        )

    return get


def inputs(batch: Batch) -> tuple[np.ndarray, ...]:
    return batch.input_ids, batch.positions, batch.attention_mask


def against(exact_rows: np.ndarray, dtype: str, factor: float) -> Thresholds:
    """Top-1 agreement up to rounding ties, and at most `factor` x the golden's error."""
    tie = oracle_tie_rule(exact_rows, dtype)
    return Thresholds(top1=1.0, top1_tie=tie, oracle=Oracle(exact_rows, factor))


@pytest.mark.push
def test_numbers_tokenize_digit_by_digit_and_biases_are_zero(checkpoint, smollm2):
    """The GGUF's `smollm` pre-tokenizer kept (each digit its own piece), the q/k/v biases zero;
    the whole conversion against transformers' own reading is nightly (below)."""
    assert checkpoint.tokenizer.tokenize("48/2 = 24") == [
        "4",
        "8",
        "/",
        "2",
        "Ġ=",
        "Ġ",
        "2",
        "4",
    ]
    converted = load_file(smollm2 / SINGLE_FILE)
    biases = [k for k in converted if k.endswith("_proj.bias")]
    assert len(biases) == 3 * 30 and not any(converted[k].any() for k in biases)


@pytest.mark.nightly
def test_the_conversion_is_transformers_own_reading_of_the_gguf(smollm2, prompts):
    """Every weight bit-equal to transformers' dequantization of the GGUF (q/k rows in its order),
    the q/k/v biases zero, and the tokenizer's ids equal on every text; numbers go digit by digit
    (the GGUF's `smollm` pre-tokenizer)."""
    llama = load_hf_gguf(gguf_path(), "float32")
    converted = load_file(smollm2 / SINGLE_FILE)
    theirs = {
        k: v.numpy() for k, v in llama.state_dict().items() if k != "lm_head.weight"
    }
    biases = {k for k in converted if k.endswith("_proj.bias")}
    assert set(converted) - biases == set(theirs) and len(biases) == 3 * 30
    assert all(np.array_equal(converted[k], theirs[k]) for k in theirs)
    assert not any(converted[k].any() for k in biases)
    reference = AutoTokenizer.from_pretrained(
        gguf_path().parent, gguf_file=gguf_path().name
    )
    assert prompts == [reference(t)["input_ids"] for t in TEXTS]
    tokenizer = Checkpoint.open(smollm2).tokenizer
    assert tokenizer.tokenize("2024") == ["2", "0", "2", "4"]


@pytest.mark.nightly
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_qwen2_with_zero_biases_is_llama(smollm2, batch, dtype):
    """Hugging Face's Qwen2 on the converted checkpoint and its Llama on the GGUF: the same logits,
    bit for bit (a zero bias adds exact zeros)."""
    args = {
        "input_ids": to_torch(batch.input_ids).long(),
        "attention_mask": to_torch(batch.attention_mask).long(),
        "position_ids": to_torch(batch.positions).long(),
    }
    with torch.no_grad():
        qwen2 = load_hf(smollm2, dtype)(**args).logits
        llama = load_hf_gguf(gguf_path(), dtype)(**args).logits
    assert torch.equal(qwen2[to_torch(batch.valid)], llama[to_torch(batch.valid)])


@pytest.mark.push
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_logits_against_hugging_face(
    smollm2, batch, ours, exact, dtype, dut, record_property
):
    """One device against Hugging Face on the same weights: the same top-1 token up to rounding
    ties, and no further from the exact logits than AGAINST_HF x Hugging Face's own error.
    """
    with torch.no_grad():
        hf = load_hf(smollm2, dtype)(
            input_ids=to_torch(batch.input_ids).long(),
            attention_mask=to_torch(batch.attention_mask).long(),
            position_ids=to_torch(batch.positions).long(),
        ).logits
    result = EquivalenceTester(
        against(exact(dtype), dtype, AGAINST_HF[dtype]), dut
    ).test_against(
        lambda: to_numpy(hf),
        module_workload(ours(dtype), *inputs(batch)),
        mask=batch.valid,
    )
    for key, value in result.metrics().items():
        record_property(key, value)


@pytest.mark.push_where(dtype="float32")
@pytest.mark.nightly_unless(dtype="float32")
@pytest.mark.tensor_parallel
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_logits_on_mesh(
    batch, ours, golden_logits, exact, dtype, mesh, dut, record_property
):
    """Every mesh against one device: the same top-1 token up to rounding ties, as accurate (the
    audit's factor), and the forward's planned all-reduces only."""
    sharded = shard_model(ours(dtype), mesh, kernels_for(dut.platform))
    tester = EquivalenceTester(against(exact(dtype), dtype, ACCURACY_FACTOR), dut)
    result = tester.test_against(
        lambda: golden_logits(dtype),
        module_workload(sharded, *inputs(batch)),
        arg_shardings=placed_like(sharded, mesh, *[P("batch", None)] * 3),
        mask=batch.valid,
        collectives={"all_reduce": forward_all_reduces(sharded.cfg)},
    )
    for key, value in result.metrics().items():
        record_property(key, value)


@pytest.fixture(scope="module")
def hf_tokens(smollm2, prompts, checkpoint) -> list[list[int]]:
    """Hugging Face's greedy float32 tokens for the prompts."""
    hf = load_hf(smollm2, "float32")
    pad = checkpoint.pad_token_id
    return hf_greedy(hf, prompts, NEW_TOKENS, checkpoint.eos_token_ids, pad)


def generator(checkpoint, model, mesh=None) -> Generator:
    eos, pad = checkpoint.eos_token_ids, checkpoint.pad_token_id
    return Generator(model, eos, pad, mesh)


@pytest.mark.push
def test_greedy_against_hugging_face(checkpoint, prompts, ours, hf_tokens):
    """float32, one device: Hugging Face's tokens, at least one row the full 32."""
    result = generator(checkpoint, ours("float32")).generate(prompts, NEW_TOKENS)
    assert result.generated_token_ids == hf_tokens
    assert max(map(len, hf_tokens)) == NEW_TOKENS


@pytest.mark.nightly  # the default tier's demo generates on 1x8 (test_generation.py)
@pytest.mark.tensor_parallel
def test_greedy_on_mesh(checkpoint, prompts, mesh, dut, request):
    """float32 on every mesh: one device's tokens, which are Hugging Face's."""
    if dut.compile_only:
        pytest.skip(NEEDS_DATA)
    ours, hf_tokens = (request.getfixturevalue(f) for f in ("ours", "hf_tokens"))
    gen = generator(checkpoint, shard_model(ours("float32"), mesh), mesh)
    assert gen.generate(prompts, NEW_TOKENS).generated_token_ids == hf_tokens


@pytest.mark.tensor_parallel
def test_steps_compile_for_tt_on_every_mesh(
    checkpoint, prompts, smollm2, mesh, dut, record_property
):
    """The TT compiler takes a request's steps on every mesh (a prompt's first prefill chunk and
    the decode step, its rows at one slot or at their own): the planned collectives, two
    `paged_update_cache` per layer in a decode step, nothing on the host (step_checks). The other
    steps are checked on the tiny presets (test_generation): all seven at 30 layers on four
    meshes would double the TT run."""
    if dut.platform != TT:
        pytest.skip(TT_ONLY)
    model = abstract_model(checkpoint.cfg, jnp.float32, mesh, TT_FORMS)
    request = (prompts, NEW_TOKENS, SamplingConfig())
    gen = generator(checkpoint, model, mesh)
    kinds = (PREFILL, DECODE, DECODE_ROWS)
    compiles_as_planned(gen, *request, mesh, dut, record_property, kinds)


# Dropping a q_proj bias changes nothing where the biases are zero, as they are in a Llama model.
VACUOUS_HERE = ("q_bias_dropped_on_one_device",)
# At or below bfloat16's resolution here (measured, docs/real_weights.md): the bfloat16 softmax and
# RMSNorm's epsilon 10x leave the mesh within 1.25x and 1.57x one device's error against the
# oracle, where correct meshes measure 0.73-1.54x; decode's RoPE position off by one (a neighbour's
# rotation, theta 1e5) is 1.63x over all prompts and 2.04x on one, at the bound, so its verdict
# would rest on the host's bfloat16 rounding. The float32 audit calls all three `different`.
AT_BFLOAT16_RESOLUTION_HERE = (
    "bfloat16_softmax",
    "rms_norm_eps_changed",
    "decode_position_off_by_one",
)
CAUGHT = [f for f in CATALOG if f not in VACUOUS_HERE]


@pytest.fixture(scope="module")
def audited_smollm2(smollm2, checkpoint, prompts) -> Audited:
    return Audited(smollm2, checkpoint.cfg, prompts)


@pytest.mark.nightly
@pytest.mark.tensor_parallel
@pytest.mark.parametrize(
    ("dtype", "fault"),
    [("float32", f) for f in CAUGHT]
    + [("bfloat16", f) for f in CAUGHT if f not in AT_BFLOAT16_RESOLUTION_HERE],
)
def test_a_catalog_fault_is_different_on_the_trained_model(
    dtype, fault, dut, audited_smollm2, record_property
):
    """The fault catalog (faults.py) injected into the trained model's 1x8 mesh, greedy on
    TEXTS: the audit's verdict `different`, every fault in float32 and those above bfloat16's
    resolution in bfloat16, each fault's effect on the logits recorded."""
    if dut.compile_only:
        pytest.skip(NEEDS_DATA)
    check_fault(audited_smollm2, dut, dtype, fault, record_property, with_effect=True)
