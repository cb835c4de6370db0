// SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
//
// SPDX-License-Identifier: Apache-2.0

// A KV-cache write of one token per row, each row at its own slot, in the cache's own buffer on
// XLA:CPU. Why it exists: cpu_cache.py.
//
// cache (B, K, S, H) is aliased to the result; tokens (B, K, 1, H) and slots (B,) int32. Each
// (row, head) gets its token's H elements at its row's slot, byte for byte: any element type.

#include <cstdint>
#include <cstring>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

ffi::Error WriteRows(ffi::AnyBuffer cache, ffi::AnyBuffer tokens, ffi::Buffer<ffi::S32> slots,
                     ffi::Result<ffi::AnyBuffer> out) {
  const auto dims = cache.dimensions();
  const auto given = tokens.dimensions();
  if (dims.size() != 4 || given.size() != 4 || given[0] != dims[0] || given[1] != dims[1] || given[2] != 1 ||
      given[3] != dims[3] || slots.element_count() != size_t(dims[0]) ||
      tokens.element_type() != cache.element_type())
    return ffi::Error::InvalidArgument("write_rows: cache (B, K, S, H), tokens (B, K, 1, H) of its type, slots (B,)");
  const int64_t B = dims[0], K = dims[1], S = dims[2];
  const size_t token = size_t(dims[3]) * ffi::ByteWidth(cache.element_type());
  char* to = static_cast<char*>(out->untyped_data());
  // XLA aliases a donated, otherwise unread cache; any other it hands over as a copy to fill.
  if (to != cache.untyped_data()) std::memcpy(to, cache.untyped_data(), cache.size_bytes());
  const char* from = static_cast<const char*>(tokens.untyped_data());
  const int32_t* slot = slots.typed_data();
  for (int64_t b = 0; b < B; ++b)
    if (slot[b] < 0 || slot[b] >= S) return ffi::Error::InvalidArgument("write_rows: a slot outside the cache");
  for (int64_t b = 0; b < B; ++b)
    for (int64_t k = 0; k < K; ++k)
      std::memcpy(to + ((b * K + k) * S + slot[b]) * token, from + (b * K + k) * token, token);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(cpu_cache_write_rows, WriteRows,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::AnyBuffer>());
