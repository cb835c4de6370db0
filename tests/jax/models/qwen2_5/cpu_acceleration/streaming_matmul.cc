// SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
//
// SPDX-License-Identifier: Apache-2.0

// y (M, N) = x (M, K) times w (N, K) transposed, bfloat16 operands accumulated
// in float32, for few rows M: a decode step's product streamed once from a
// weight stored (out, in). Why it exists: streaming_matmul.py.
//
// bfloat16 values widen to float32 exactly and their products are exact in
// float32, so the result differs from any other float32-accumulating GEMM only
// in summation order. Built with AVX2 and FMA; the Python side loads it only on
// such CPUs. Where the CPU has AVX512_BF16 (the caller says so, `native`), a
// second path multiplies bfloat16 pairs with its dot instruction: the same
// exact products and float32 sums, four times the products per instruction (at
// a few rows the AVX2 path is compute-bound there, not memory-bound), denormals
// flushed as XLA:CPU flushes them.

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "ffi_chunks.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Eight weights from k on: a bfloat16 is the upper half of a float32.
inline __m256 load8(const uint16_t *w) {
  __m128i halves = _mm_loadu_si128(reinterpret_cast<const __m128i *>(w));
  return _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_cvtepu16_epi32(halves), 16));
}
inline float widen(uint16_t w) {
  return _mm_cvtss_f32(_mm_castsi128_ps(_mm_cvtsi32_si128(int32_t(w) << 16)));
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

// How far ahead of each row's cursor to prefetch, in weights. One core keeps
// too few cache misses in flight to stream at memory speed by itself, and the
// hardware prefetcher starts over on every row: 4 KB page boundaries stop it
// and it needs a few lines to ramp up. A row shorter than a page (0.5B's 896
// bfloat16s) is therefore prefetched at the same position NB rows on, in the
// next block; a longer row 1 KB ahead within itself. Measured on 2-core hosts,
// README "Performance": 896-wide bfloat16 rows went from 14 to 21 GB/s,
// 4864-wide from 20 to 25.
template <int NB> int64_t prefetch_ahead(int64_t K) {
  return K * 2 < 4096 ? NB * K : 512;
}

// NB weight rows against MB rows of x (float32), all of K: NB*MB accumulators
// stay in registers (at most 8 of the 16 ymm), and each weight vector is
// widened once per pass over the MB rows.
template <int NB, int MB>
void block(const float *x, int64_t K, const uint16_t *w, float *y, int64_t N) {
  const int64_t ahead = prefetch_ahead<NB>(K);
  __m256 acc[MB][NB];
  for (int m = 0; m < MB; ++m)
    for (int j = 0; j < NB; ++j)
      acc[m][j] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256 wv[NB];
    for (int j = 0; j < NB; ++j) {
      _mm_prefetch(reinterpret_cast<const char *>(w + j * K + k + ahead),
                   _MM_HINT_T0);
      wv[j] = load8(w + j * K + k);
    }
    for (int m = 0; m < MB; ++m) {
      __m256 xv = _mm256_loadu_ps(x + m * K + k);
      for (int j = 0; j < NB; ++j)
        acc[m][j] = _mm256_fmadd_ps(wv[j], xv, acc[m][j]);
    }
  }
  for (int m = 0; m < MB; ++m) {
    for (int j = 0; j < NB; ++j) {
      float sum = hsum(acc[m][j]);
      for (int64_t t = k; t < K; ++t)
        sum += widen(w[j * K + t]) * x[m * K + t];
      y[m * N + j] = sum;
    }
  }
}

template <int NB>
void rows_of_x(const float *x, int64_t M, int64_t K, const uint16_t *w,
               float *y, int64_t N) {
  constexpr int kMaxRows = NB == 4 ? 2 : 4; // NB * rows <= 8 accumulators
  for (int64_t m = 0; m < M; m += kMaxRows) {
    const float *xm = x + m * K;
    float *ym = y + m * N;
    switch (std::min<int64_t>(kMaxRows, M - m)) {
    case 1:
      block<NB, 1>(xm, K, w, ym, N);
      break;
    case 2:
      block<NB, 2>(xm, K, w, ym, N);
      break;
    case 3:
      if constexpr (kMaxRows >= 3)
        block<NB, 3>(xm, K, w, ym, N);
      break;
    case 4:
      if constexpr (kMaxRows >= 4)
        block<NB, 4>(xm, K, w, ym, N);
      break;
    }
  }
}

// The AVX512_BF16 path: NB weight rows against MB rows of x, both bfloat16, 32
// of K per instruction (16 lanes of pairs), NB*MB accumulators in registers (at
// most 16 of the 32 zmm). K's tail is loaded masked, its missing pairs zero.
#define NATIVE_BF16 __attribute__((target("avx512f,avx512bw,avx512bf16")))

template <int NB, int MB>
NATIVE_BF16 void block_native(const uint16_t *x, int64_t K, const uint16_t *w,
                              float *y, int64_t N) {
  const int64_t ahead = prefetch_ahead<NB>(K);
  __m512 acc[MB][NB];
  for (int m = 0; m < MB; ++m)
    for (int j = 0; j < NB; ++j)
      acc[m][j] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    __m512bh wv[NB];
    for (int j = 0; j < NB; ++j) {
      _mm_prefetch(reinterpret_cast<const char *>(w + j * K + k + ahead),
                   _MM_HINT_T0);
      wv[j] = (__m512bh)_mm512_loadu_si512(w + j * K + k);
    }
    for (int m = 0; m < MB; ++m) {
      const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + m * K + k);
      for (int j = 0; j < NB; ++j)
        acc[m][j] = _mm512_dpbf16_ps(acc[m][j], wv[j], xv);
    }
  }
  // The tail apart: with masked loads in the loop GCC keeps every accumulator
  // in memory.
  if (k < K) {
    const __mmask32 mask = __mmask32((uint64_t(1) << (K - k)) - 1);
    __m512bh wv[NB];
    for (int j = 0; j < NB; ++j)
      wv[j] = (__m512bh)_mm512_maskz_loadu_epi16(mask, w + j * K + k);
    for (int m = 0; m < MB; ++m) {
      const __m512bh xv =
          (__m512bh)_mm512_maskz_loadu_epi16(mask, x + m * K + k);
      for (int j = 0; j < NB; ++j)
        acc[m][j] = _mm512_dpbf16_ps(acc[m][j], wv[j], xv);
    }
  }
  for (int m = 0; m < MB; ++m)
    for (int j = 0; j < NB; ++j)
      y[m * N + j] = _mm512_reduce_add_ps(acc[m][j]);
}

// block_native for the R <= 16 / NB rows of x left, R a compile-time constant.
template <int NB, int R = 16 / NB>
NATIVE_BF16 void last_rows_native(int64_t rows, const uint16_t *x, int64_t K,
                                  const uint16_t *w, float *y, int64_t N) {
  if constexpr (R > 1) {
    if (rows < R)
      return last_rows_native<NB, R - 1>(rows, x, K, w, y, N);
  }
  block_native<NB, R>(x, K, w, y, N);
}

template <int NB>
NATIVE_BF16 void rows_of_x_native(const uint16_t *x, int64_t M, int64_t K,
                                  const uint16_t *w, float *y, int64_t N) {
  constexpr int kMaxRows = 16 / NB; // NB * rows <= 16 accumulators
  for (int64_t m = 0; m < M; m += kMaxRows)
    last_rows_native<NB>(std::min<int64_t>(kMaxRows, M - m), x + m * K, K, w,
                         y + m * N, N);
}

// Weight rows [n0, n1), four at a time: 16 accumulators for up to four rows of
// x, each block of weights then read again from L1 for the next four (measured
// on Zen 4, cache-resident: four weight rows by four of x did as well as any
// blocking from 1 to 16 rows of x).
NATIVE_BF16 void weight_rows_native(const uint16_t *x, int64_t M, int64_t K,
                                    const uint16_t *w, float *y, int64_t N,
                                    int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4)
    rows_of_x_native<4>(x, M, K, w + n * K, y + n, N);
  for (; n < n1; ++n)
    rows_of_x_native<1>(x, M, K, w + n * K, y + n, N);
}

// Weight rows [n0, n1): four at a time when x has one or two rows (more
// independent streams and accumulator chains), two at a time otherwise (each
// widened weight serves up to four rows).
void weight_rows(const float *x, int64_t M, int64_t K, const uint16_t *w,
                 float *y, int64_t N, int64_t n0, int64_t n1) {
  const int64_t nb = M <= 2 ? 4 : 2;
  int64_t n = n0;
  for (; n + nb <= n1; n += nb) {
    if (nb == 4)
      rows_of_x<4>(x, M, K, w + n * K, y + n, N);
    else
      rows_of_x<2>(x, M, K, w + n * K, y + n, N);
  }
  for (; n < n1; ++n)
    rows_of_x<1>(x, M, K, w + n * K, y + n, N);
}

constexpr int64_t kChunkBytes = 256 * 1024;

// `rows_of` computes weight rows [n0, n1) of y: one path's weight_rows.
template <typename RowsOf>
void matmul(int64_t K, int64_t N, ffi::ThreadPool &pool, RowsOf rows_of) {
  const int64_t rows = std::max<int64_t>(4, kChunkBytes / (K * 2) / 4 * 4);
  // The weight rows in chunks taken by this thread and XLA's intra-op pool
  // (ffi_chunks.h).
  ffi_chunks::run(pool, (N + rows - 1) / rows, [=](int64_t c) {
    rows_of(c * rows, std::min(N, (c + 1) * rows));
  });
}

ffi::Error StreamingMatmul(ffi::ThreadPool pool, ffi::BufferR2<ffi::BF16> x,
                           ffi::BufferR2<ffi::BF16> w,
                           ffi::Result<ffi::BufferR2<ffi::F32>> y,
                           bool native) {
  const int64_t M = x.dimensions()[0], K = x.dimensions()[1],
                N = w.dimensions()[0];
  if (w.dimensions()[1] != K)
    return ffi::Error::InvalidArgument(
        "streaming_matmul: x (M, K) and w (N, K) differ in K");
  if (M == 0 || N == 0)
    return ffi::Error::Success();
  if (K == 0) {
    std::fill_n(y->typed_data(), M * N, 0.0f);
    return ffi::Error::Success();
  }
  const uint16_t *xb = reinterpret_cast<const uint16_t *>(x.untyped_data());
  const uint16_t *wb = reinterpret_cast<const uint16_t *>(w.untyped_data());
  float *yf = y->typed_data();
  if (native) {
    matmul(K, N, pool, [=](int64_t n0, int64_t n1) {
      weight_rows_native(xb, M, K, wb, yf, N, n0, n1);
    });
    return ffi::Error::Success();
  }
  // x is small (M rows): widened once here, it is then read from cache for
  // every weight row. The buffer lives on this thread, which waits until every
  // chunk has been computed.
  thread_local std::vector<float> widened;
  widened.resize(M * K);
  for (int64_t i = 0; i < M * K; ++i)
    widened[i] = widen(xb[i]);
  const float *xf = widened.data();
  matmul(K, N, pool, [=](int64_t n0, int64_t n1) {
    weight_rows(xf, M, K, wb, yf, N, n0, n1);
  });
  return ffi::Error::Success();
}

} // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(qwen2_5_streaming_matmul, StreamingMatmul,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::BufferR2<ffi::BF16>>()
                                  .Arg<ffi::BufferR2<ffi::BF16>>()
                                  .Ret<ffi::BufferR2<ffi::F32>>()
                                  .Attr<bool>("native"));
