# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tests.infra.cpu_cache import in_place_rows, write_in_place
from tests.infra.devices import CPU, platform_devices
from tests.infra.mesh import make_mesh

pytestmark = pytest.mark.push

SPEC = P("batch", "model", None, None)


def _select(cache: jax.Array, new: jax.Array, slots: jax.Array) -> jax.Array:
    """The reference: each row's token at its slot, every other element kept."""
    hit = jnp.arange(cache.shape[2]) == slots[:, None]
    return jnp.where(hit[:, None, :, None], new, cache)


def _case(dtype, rows=4, heads=2, slots=40, width=8, seed=0):
    rng = np.random.default_rng(seed)
    cache = jnp.asarray(rng.standard_normal((rows, heads, slots, width)), dtype)
    new = jnp.asarray(rng.standard_normal((rows, heads, 1, width)), dtype)
    # Each row at its own slot, the first and last slot among them.
    at = [0, slots - 1, *rng.integers(1, slots - 1, max(rows - 2, 0))]
    at = jnp.asarray(at[:rows], jnp.int32)
    return cache, new, at


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_writes_each_rows_token_at_its_slot_and_nothing_else(dtype):
    cache, new, at = _case(dtype)
    expected = np.asarray(_select(cache, new, at))
    got = np.asarray(jax.jit(write_in_place)(cache, new, at))
    assert got.dtype == expected.dtype and np.array_equal(got, expected)
    # The reference is not the identity: a write one slot off would differ.
    assert not np.array_equal(np.asarray(_select(cache, new, at + 1)), expected)


def test_a_donated_cache_is_written_in_its_own_buffer():
    """The point of the kernel: no copy of the cache, in the compiled program or at run time."""
    cache, new, at = _case(jnp.bfloat16)
    step = jax.jit(write_in_place, donate_argnums=0)
    hlo = step.lower(cache, new, at).compile().as_text()
    assert " copy(" not in hlo and "copy_fusion" not in hlo
    before = cache.unsafe_buffer_pointer()
    assert step(cache, new, at).unsafe_buffer_pointer() == before


def test_a_cache_still_read_elsewhere_is_copied_first():
    """Undonated, the caller's cache keeps its values: XLA hands the kernel a copy."""
    cache, new, at = _case(jnp.float32)
    kept = np.asarray(cache)
    written = jax.jit(lambda c, n, s: (write_in_place(c, n, s), c * 1))(cache, new, at)
    assert np.array_equal(np.asarray(written[1]), kept)
    assert np.array_equal(np.asarray(written[0]), np.asarray(_select(cache, new, at)))


def test_a_slot_outside_the_cache_is_an_error_not_a_clamp():
    cache, new, at = _case(jnp.bfloat16)
    with pytest.raises(Exception, match="a slot outside the cache"):
        jax.block_until_ready(jax.jit(write_in_place)(cache, new, at.at[1].set(40)))


@pytest.mark.parametrize("shape, rows", [("2x4", 4), ("2x4", 1), ("1x8", 2)])
def test_under_a_mesh_each_device_writes_its_own_rows_and_heads(shape, rows):
    """Rows split over `batch` where it divides them, else every group writes them all."""
    mesh = make_mesh(shape, platform_devices(CPU))
    cache, new, at = _case(jnp.bfloat16, rows=rows, heads=8)
    split = rows % mesh.shape["batch"] == 0
    write = in_place_rows(
        _select,
        SPEC,
        lambda n: "batch" if split and n % mesh.shape["batch"] == 0 else None,
    )
    spec = SPEC if split else P(None, *SPEC[1:])
    with jax.set_mesh(mesh):
        placed = [
            jax.device_put(x, NamedSharding(mesh, s))
            for x, s in ((cache, spec), (new, spec))
        ]
        step = jax.jit(write, donate_argnums=0)
        hlo = step.lower(*placed, at).as_text()
        got = step(*placed, at)
    assert "cpu_cache_write_rows" in hlo and got.sharding.spec == spec
    assert np.array_equal(np.asarray(got), np.asarray(_select(cache, new, at)))


def test_other_platforms_get_the_default():
    """Lowered for TT, the program holds the caller's default, not the CPU custom call."""
    write = in_place_rows(_select, SPEC, lambda n: None)
    cache, new, at = _case(jnp.bfloat16)
    lowered = jax.jit(write).trace(cache, new, at).lower(lowering_platforms=("tt",))
    text = lowered.as_text()
    assert "cpu_cache_write_rows" not in text and "select" in text
