# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""The JAX infrastructure's own tests (tests/jax/infra), as tt-xla keeps infra tests apart."""

from pathlib import Path

import pytest

from tests.jax.infra.pytest_plugin import register_tests


def pytest_configure(config: pytest.Config) -> None:
    """This folder's tests are the package plugin's (tests/jax/infra/pytest_plugin.py)."""
    register_tests(config, Path(__file__).parent)
