import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tests.infra.comparison import ComparisonConfig, ComparisonError
from tests.infra.devices import platform_devices
from tests.infra.mesh import make_mesh
from tests.infra.testers import EquivalenceTester, Workload

pytestmark = pytest.mark.push

RNG = np.random.default_rng(0)
X = RNG.standard_normal((8, 64)).astype(np.float32)
W = RNG.standard_normal((64, 32)).astype(np.float32)


def matmul(x, w):
    return jnp.tanh(x @ w)


def test_sharded_run_matches_golden_and_is_really_sharded():
    mesh = make_mesh("2x4", platform_devices("cpu"))
    tester = EquivalenceTester(ComparisonConfig(atol=1e-5), platform_devices("cpu"))
    shardings = (NamedSharding(mesh, P("batch", None)), NamedSharding(mesh, P(None, "model")))
    placed = jax.device_put((X, W), shardings)
    assert len(placed[1].sharding.device_set) == 8 and placed[1].addressable_shards[0].data.shape == (64, 8)
    result = tester.test(Workload(matmul, (X, W)), arg_shardings=shardings)
    assert result.max_abs_diff <= 1e-5


def test_wrong_device_under_test_is_caught():
    tester = EquivalenceTester(ComparisonConfig(atol=1e-4), platform_devices("cpu"))
    off_by_a_bit = Workload(lambda x, w: matmul(x, w) + 1e-3, (X, W))
    with pytest.raises(ComparisonError, match="max_abs_diff 1.0"):
        tester.test(Workload(matmul, (X, W)), off_by_a_bit)


def test_golden_runs_on_the_first_cpu_device_and_dut_on_its_own(monkeypatch):
    placements = []
    device_put = jax.device_put

    def recording_device_put(tree, target):
        placements.append(target)
        return device_put(tree, target)

    monkeypatch.setattr(jax, "device_put", recording_device_put)
    tester = EquivalenceTester(ComparisonConfig(atol=0.0), platform_devices("cpu")[5:])
    tester.test(Workload(matmul, (X, W)))
    assert placements == [jax.devices("cpu")[0], jax.devices("cpu")[5]]
