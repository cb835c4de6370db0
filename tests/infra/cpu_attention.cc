// SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
//
// SPDX-License-Identifier: Apache-2.0

// Decode attention on XLA:CPU: one query per row over a KV cache, grouped queries, the model's
// rounding points kept. Why it exists: cpu_attention.py.
//
// q (B, Hq, 1, H), keys and values (B, K, S, H), bias (B, 1, 1, S), all bfloat16 or all float32
// (the model dtype T) -> (B, Hq, 1, H) of T. Query head k*G + g reads KV head k. As the plain form:
// scores summed in float32 and rounded to T, times the scale in T, plus the bias in float32; a
// float32 softmax (exp(x - max) / sum) rounded to T; probabilities times values summed in float32
// and rounded to T. Slots whose bias hides them are skipped where the row sees any slot: their
// weight is exactly 0 either way. Only summation orders and exp's last bit differ from XLA's.

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "ffi_chunks.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// A bias at or below this hides its slot (the model's is the dtype's most negative finite value).
constexpr float kHidden = -1e30f;

inline float widen(uint16_t h) {
  const uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// float32 -> bfloat16, round to nearest even; a NaN stays a NaN.
inline uint16_t narrow(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// The model dtype's loads, stores and rounding to it, one value or eight.
struct Bf16 {
  using T = uint16_t;
  static float in(T x) { return widen(x); }
  static T out(float f) { return narrow(f); }
  static void widen8(const T* from, float* to) {
    const __m128i halves = _mm_loadu_si128(reinterpret_cast<const __m128i*>(from));
    _mm256_storeu_ps(to, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(halves), 16)));
  }
  // Round to nearest even at bit 16; NaNs (none arise from finite inputs) stay NaNs.
  static __m256 round8(__m256 x) {
    const __m256i u = _mm256_castps_si256(x);
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i up = _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), odd));
    const __m256 rounded = _mm256_castsi256_ps(_mm256_and_si256(up, _mm256_set1_epi32(int(0xffff0000u))));
    return _mm256_blendv_ps(rounded, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
  }
};

struct F32 {
  using T = float;
  static float in(T x) { return x; }
  static T out(float f) { return f; }
  static void widen8(const T* from, float* to) { _mm256_storeu_ps(to, _mm256_loadu_ps(from)); }
  static __m256 round8(__m256 x) { return x; }
};

// Eight vectors -> one vector of their eight horizontal sums.
inline __m256 sums8(const __m256* a) {
  const __m256 s0123 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
  const __m256 s4567 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(s0123, s4567, 0x20), _mm256_permute2f128_ps(s0123, s4567, 0x31));
}

// exp of eight floats (Cephes' expf: within 1-2 ulp; exp(0) = 1 exactly, very negative -> 0).
inline __m256 exp8(__m256 x) {
  x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f)), _mm256_set1_ps(-88.3762626647949f));
  const __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  for (float c : {1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f})
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(c));
  y = _mm256_add_ps(_mm256_fmadd_ps(y, _mm256_mul_ps(x, x), x), _mm256_set1_ps(1.0f));
  const __m256i pow2n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(pow2n));
}

struct Shape {
  int64_t B, Hq, K, S, H;
};

// Per-thread working space of one (row, KV head).
struct Scratch {
  std::vector<int32_t> slots;  // the slots attended, padded to a multiple of 8
  std::vector<float> bias, q, block, probs, acc;
};

// Raw views of a Scratch for the inner loops: no vector's own pointers reloaded after a store.
struct Work {
  const int32_t* __restrict slots;
  const float* __restrict bias;
  const float* __restrict q;
  float* __restrict block;
  float* __restrict probs;
  float* __restrict acc;
};

// Rows slots[j0..j0+8) of `from` (S, H) widened into block, rows past `valid` zeros. Laid out by
// chunks of eight elements, (H / 8, 8 rows, 8): the inner loops read the eight rows' chunk at
// constant offsets from one pointer. The H % 8 elements left follow, (8 rows, H % 8).
template <class E>
void widen_block(const typename E::T* from, const int32_t* slots, int valid, int64_t H, float* block) {
  const int64_t H8 = H / 8 * 8, tail = H - H8;
  for (int j = 0; j < 8; ++j) {
    const typename E::T* row = from + slots[j] * H;
    for (int64_t h = 0; h < H8; h += 8) {
      if (j < valid) E::widen8(row + h, block + h * 8 + j * 8);
      else _mm256_storeu_ps(block + h * 8 + j * 8, _mm256_setzero_ps());
    }
    for (int64_t t = 0; t < tail; ++t) block[H8 * 8 + j * tail + t] = j < valid ? E::in(row[H8 + t]) : 0.0f;
  }
}

// probs (G, n8): each query's logits over the n attended slots -> rounded probabilities.
template <class E>
void scores(const Shape& d, int64_t G, const typename E::T* k, float scale, int64_t n, const Work& w) {
  const float* __restrict q = w.q;
  float* __restrict block = w.block;
  const int64_t H = d.H, n8 = (n + 7) / 8 * 8, H8 = H / 8 * 8;
  for (int64_t j0 = 0; j0 < n8; j0 += 8) {
    widen_block<E>(k, w.slots + j0, int(std::min<int64_t>(8, n - j0)), H, block);
    for (int64_t g = 0; g < G; ++g) {
      __m256 acc[8];
      for (auto& a : acc) a = _mm256_setzero_ps();
      for (int64_t h = 0; h < H8; h += 8) {
        const __m256 qv = _mm256_loadu_ps(q + g * H + h);
        const float* chunk = block + h * 8;
        for (int j = 0; j < 8; ++j) acc[j] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(chunk + j * 8), acc[j]);
      }
      alignas(32) float dots[8];
      _mm256_store_ps(dots, sums8(acc));
      for (int j = 0; j < 8; ++j)
        for (int64_t h = H8; h < H; ++h) dots[j] += q[g * H + h] * block[H8 * 8 + j * (H - H8) + h - H8];
      const __m256 score = E::round8(_mm256_mul_ps(E::round8(_mm256_load_ps(dots)), _mm256_set1_ps(scale)));
      _mm256_storeu_ps(w.probs + g * n8 + j0, _mm256_add_ps(score, _mm256_loadu_ps(w.bias + j0)));
    }
  }
  for (int64_t g = 0; g < G; ++g) {
    float* __restrict p = w.probs + g * n8;
    __m256 top = _mm256_set1_ps(-INFINITY);
    for (int64_t j = 0; j < n8; j += 8) top = _mm256_max_ps(top, _mm256_loadu_ps(p + j));
    alignas(32) float tops[8];
    _mm256_store_ps(tops, top);
    float m = tops[0];
    for (float t : tops) m = std::max(m, t);
    __m256 total = _mm256_setzero_ps();
    for (int64_t j = 0; j < n8; j += 8) {
      const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p + j), _mm256_set1_ps(m)));
      _mm256_storeu_ps(p + j, e);
      total = _mm256_add_ps(total, e);
    }
    alignas(32) float parts[8];
    _mm256_store_ps(parts, total);
    float sum = 0.0f;
    for (float part : parts) sum += part;
    for (int64_t j = 0; j < n8; j += 8)
      _mm256_storeu_ps(p + j, E::round8(_mm256_div_ps(_mm256_loadu_ps(p + j), _mm256_set1_ps(sum))));
  }
}

// acc[0, 8C) += the eight rows of C chunks of a block, weighted.
template <int C>
inline void accumulate(const __m256* weight, const float* __restrict chunks, float* __restrict acc) {
  __m256 a[C];
  for (int c = 0; c < C; ++c) a[c] = _mm256_loadu_ps(acc + c * 8);
  for (int j = 0; j < 8; ++j)
    for (int c = 0; c < C; ++c) a[c] = _mm256_fmadd_ps(weight[j], _mm256_loadu_ps(chunks + c * 64 + j * 8), a[c]);
  for (int c = 0; c < C; ++c) _mm256_storeu_ps(acc + c * 8, a[c]);
}

// out (G, H) = probs (G, n8) times the attended values, summed in float32, rounded to T.
template <class E>
void values(const Shape& d, int64_t G, const typename E::T* v, int64_t n, const Work& w, typename E::T* out) {
  float* __restrict block = w.block;
  const int64_t H = d.H, n8 = (n + 7) / 8 * 8, H8 = H / 8 * 8;
  std::fill(w.acc, w.acc + G * H, 0.0f);
  for (int64_t j0 = 0; j0 < n8; j0 += 8) {
    widen_block<E>(v, w.slots + j0, int(std::min<int64_t>(8, n - j0)), H, block);
    for (int64_t g = 0; g < G; ++g) {
      const float* __restrict p = w.probs + g * n8 + j0;
      float* __restrict acc = w.acc + g * H;
      __m256 weight[8];
      for (int j = 0; j < 8; ++j) weight[j] = _mm256_set1_ps(p[j]);
      // Four chunks at a time: four independent chains of FMAs, not one chain of eight.
      int64_t h = 0;
      for (; h + 32 <= H8; h += 32) accumulate<4>(weight, block + h * 8, acc + h);
      for (; h < H8; h += 8) accumulate<1>(weight, block + h * 8, acc + h);
      for (int64_t h = H8; h < H; ++h)
        for (int j = 0; j < 8; ++j) acc[h] += p[j] * block[H8 * 8 + j * (H - H8) + h - H8];
    }
  }
  for (int64_t i = 0; i < G * H; ++i) out[i] = E::out(w.acc[i]);
}

// One row b and KV head kh: its G queries over the slots the row sees.
template <class E>
void attend(const Shape& d, const typename E::T* q, const typename E::T* k, const typename E::T* v,
            const typename E::T* bias, float scale, typename E::T* out, int64_t b, int64_t kh) {
  thread_local Scratch s;
  const int64_t G = d.Hq / d.K, H = d.H;
  const typename E::T* row_bias = bias + b * d.S;
  s.slots.clear();
  for (int64_t i = 0; i < d.S; ++i)
    if (E::in(row_bias[i]) > kHidden) s.slots.push_back(int32_t(i));
  if (s.slots.empty())  // a pad row sees no slot: uniform weights over all, as the plain form
    for (int64_t i = 0; i < d.S; ++i) s.slots.push_back(int32_t(i));
  const int64_t n = int64_t(s.slots.size()), n8 = (n + 7) / 8 * 8;
  s.slots.resize(n8, 0);
  // Each attended slot's bias; -inf past the last, so padding gets a weight of exactly 0.
  s.bias.assign(n8, -INFINITY);
  for (int64_t j = 0; j < n; ++j) s.bias[j] = E::in(row_bias[s.slots[j]]);
  s.q.resize(G * H);
  s.block.resize(8 * H);
  s.probs.resize(G * n8);
  s.acc.resize(G * H);
  const int64_t first = (b * d.Hq + kh * G) * H, cache = (b * d.K + kh) * d.S * H;
  for (int64_t i = 0; i < G * H; ++i) s.q[i] = E::in(q[first + i]);
  const Work w{s.slots.data(), s.bias.data(), s.q.data(), s.block.data(), s.probs.data(), s.acc.data()};
  scores<E>(d, G, k + cache, scale, n, w);
  values<E>(d, G, v + cache, n, w, out + first);
}

template <class E>
void run(ffi::ThreadPool& pool, const Shape& d, ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
         ffi::AnyBuffer bias, float scale, ffi::Result<ffi::AnyBuffer>& out) {
  using T = typename E::T;
  const T *qp = static_cast<const T*>(q.untyped_data()), *kp = static_cast<const T*>(k.untyped_data());
  const T *vp = static_cast<const T*>(v.untyped_data()), *bp = static_cast<const T*>(bias.untyped_data());
  T* op = static_cast<T*>(out->untyped_data());
  const float s = scale;  // already of the model dtype (cpu_attention.attend)
  ffi_chunks::run(pool, d.B * d.K, [=](int64_t task) { attend<E>(d, qp, kp, vp, bp, s, op, task / d.K, task % d.K); });
}

ffi::Error DecodeAttention(ffi::ThreadPool pool, ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                           ffi::AnyBuffer bias, ffi::Result<ffi::AnyBuffer> out, float scale) {
  const auto qd = q.dimensions(), kd = k.dimensions(), bd = bias.dimensions();
  const auto type = q.element_type();
  const bool shapes = qd.size() == 4 && kd.size() == 4 && bd.size() == 4 && qd[2] == 1 && kd[0] == qd[0] &&
                      kd[3] == qd[3] && kd[1] > 0 && qd[1] % kd[1] == 0 && v.dimensions().size() == 4 &&
                      std::equal(kd.begin(), kd.end(), v.dimensions().begin()) &&
                      bd[0] == qd[0] && bd[1] == 1 && bd[2] == 1 && bd[3] == kd[2] && kd[2] > 0;
  const bool types = k.element_type() == type && v.element_type() == type && bias.element_type() == type &&
                     (type == ffi::DataType::BF16 || type == ffi::DataType::F32);
  if (!shapes || !types)
    return ffi::Error::InvalidArgument(
        "decode_attention: q (B, G*K, 1, H), keys and values (B, K, S, H), bias (B, 1, 1, S), all bfloat16 or all "
        "float32");
  const Shape d{qd[0], qd[1], kd[1], kd[2], kd[3]};
  if (type == ffi::DataType::BF16) run<Bf16>(pool, d, q, k, v, bias, scale, out);
  else run<F32>(pool, d, q, k, v, bias, scale, out);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(cpu_decode_attention, DecodeAttention,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<float>("scale"));
