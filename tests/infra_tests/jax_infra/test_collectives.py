# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tests.jax.infra.collectives import (
    CollectivesError,
    check_collectives,
    compile_and_count,
    hlo_collectives,
    ttnn_collectives,
)
from tests.jax.infra.devices import CPU, platform_devices
from tests.jax.infra.mesh import make_mesh

pytestmark = pytest.mark.push

# Excerpts of what each compiler emits (a TTNN module exported by jax-tt-plugin 0.1.3).
HLO = """
  %all-reduce = f32[1,16,224]{2,1,0} all-reduce(%fusion), channel_id=4, replica_groups={{0,1,2,3}}
  %all-gather-start = (f32[1,4]{0,1}, f32[4,4]{0,1}) all-gather-start(%bitcast.68), dimensions={1}
  %all-gather-done = f32[4,4]{0,1} all-gather-done(%all-gather-start)
  %collective-permute = f32[8]{0} collective-permute(%p), source_target_pairs={{0,1}}
  %add = f32[8]{0} add(%all-reduce, %p)  // metadata={op_name="all-reduce("}
"""
TTNN = """
    %4 = "ttnn.all_reduce"(%3) <{cluster_axis = 1 : ui32, reduce_type = #ttcore.reduce_type<sum>}> : (tensor<4x32xf32>)
        %5 = "ttnn.all_gather"(%4) <{all_gather_dim = 3 : si32, cluster_axis = 1 : ui32}> : (tensor<1x1x4x32xf32>)
        %6 = "ttnn.point_to_point"(%5) : (tensor<1x1x4x32xf32>)
        %7 = "ttnn.matmul"(%6, %6) : (tensor<1x1x4x32xf32>)
#loc10 = loc("jit(<lambda>)/dot_general_all_reduce_4d"(#loc8))
"""


def test_hlo_collectives_count_async_pairs_once_and_skip_names_in_metadata():
    assert hlo_collectives(HLO) == {
        "all_reduce": 1,
        "all_gather": 1,
        "collective_permute": 1,
    }


def test_ttnn_collectives_use_the_same_names():
    assert ttnn_collectives(TTNN) == {
        "all_reduce": 1,
        "all_gather": 1,
        "collective_permute": 1,
    }


def _row_parallel_matmul():
    mesh = make_mesh("1x8", platform_devices(CPU))
    x = jax.ShapeDtypeStruct(
        (4, 64), jnp.float32, sharding=NamedSharding(mesh, P(None, "model"))
    )
    w = jax.ShapeDtypeStruct(
        (64, 32), jnp.float32, sharding=NamedSharding(mesh, P("model", None))
    )
    return jax.jit(lambda x, w: x @ w).lower(x, w)


def test_a_split_contraction_compiles_to_one_all_reduce():
    compiled, found, _ = compile_and_count(_row_parallel_matmul(), CPU)
    assert found == {"all_reduce": 1}
    args = [np.ones((4, 64), np.float32), np.ones((64, 32), np.float32)]
    mesh = make_mesh("1x8", platform_devices(CPU))
    placed = jax.device_put(
        args,
        [NamedSharding(mesh, P(None, "model")), NamedSharding(mesh, P("model", None))],
    )
    assert np.asarray(compiled(*placed))[0, 0] == 64.0


def test_a_program_off_plan_fails_with_both_counts():
    with pytest.raises(
        CollectivesError,
        match=r"cpu collectives \{'all_reduce': 1\}, planned \{'all_gather': 1\}",
    ):
        check_collectives(
            _row_parallel_matmul(), CPU, {"all_gather": 1, "all_reduce": 0}
        )
    _, check = check_collectives(
        _row_parallel_matmul(), CPU, {"all_reduce": 1, "all_gather": 0}
    )
    assert check.passed and check.metrics() == {"cpu_all_reduce": 1}
