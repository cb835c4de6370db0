# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""The package's pytest plugin (options, fixtures, tiers, JAX set-up): tests/jax/infra/pytest_plugin.py.

A tt-xla checkout has no root conftest.py; this file is added whole (README "Inside tt-xla").
"""

pytest_plugins = ("tests.jax.infra.pytest_plugin",)
