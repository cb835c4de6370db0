# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""Qwen2.5 in Flax NNX: model, Hugging Face checkpoint loading, and its tests."""
