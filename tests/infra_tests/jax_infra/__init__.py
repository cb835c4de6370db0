# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""Model-agnostic test infrastructure: devices, meshes, golden checks, equivalence testers, long runs."""
