// SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
//
// SPDX-License-Identifier: Apache-2.0

// bfloat16 attention of a prefill chunk on XLA:CPU with the CPU's matrix tiles (AMX): several
// queries per row, grouped queries, the model's rounding points kept. Why it exists:
// cpu_attention.py.
//
// q (B, Hq, T, H), keys and values (B, K, S, H), bias (B, 1, T, S), all bfloat16 -> (B, Hq, T, H).
// Query head k*G + g reads KV head k. At the model's rounding points: scores summed in float32 and
// rounded to bfloat16, times the scale in bfloat16, plus the bias in float32; a float32 softmax
// (exp(x - max) / sum) rounded to bfloat16; probabilities times values summed in float32 and
// rounded. The tiles multiply bfloat16 pairs exactly and add in float32, as XLA's own AMX kernels
// do (both flush subnormals). A task (sixteen positions of one row and KV head) reads the slots up
// to the last one any of its queries sees: the slots after it have a weight of exactly 0. Only
// summation orders and exp's last bit differ from those rounding points. A thread's scratch grows
// with the slots read: about 1.2 KB per slot for 7B's 7 queries per KV head and 128-wide heads.

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include <sys/syscall.h>
#include <unistd.h>

#include "ffi_chunks.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// A bias at or below this hides its slot (the model's is bfloat16's most negative finite value).
constexpr float kHidden = -1e30f;
// Query positions per task, one tile's rows: their G heads share every key and value read.
constexpr int64_t kPositions = 16;

inline float bf16_widen(uint16_t h) {
  const uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline __m512 widen16(const uint16_t* from) {
  const __m256i halves = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(from));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(halves), 16));
}

// Round to bfloat16 (nearest even), kept as float32; NaNs stay NaNs.
inline __m512 round16(__m512 x) {
  const __m512i u = _mm512_castps_si512(x);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i up = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), odd));
  const __m512 rounded = _mm512_castsi512_ps(_mm512_and_si512(up, _mm512_set1_epi32(int(0xffff0000u))));
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), rounded, x);
}

// Sixteen floats already rounded to bfloat16 -> their upper halves.
inline __m256i halves16(__m512 rounded) {
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(rounded), 16));
}

// exp of sixteen floats (Cephes' expf: within 1-2 ulp; exp(0) = 1 exactly, very negative -> 0).
inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.3762626647949f)), _mm512_set1_ps(-88.3762626647949f));
  const __m512 n = _mm512_roundscale_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(0.5f)),
                                        _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  x = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  x = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), x);
  __m512 y = _mm512_set1_ps(1.9875691500e-4f);
  for (float c : {1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f})
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(c));
  y = _mm512_add_ps(_mm512_fmadd_ps(y, _mm512_mul_ps(x, x), x), _mm512_set1_ps(1.0f));
  const __m512i pow2n = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(y, _mm512_castsi512_ps(pow2n));
}

struct Shape {
  int64_t B, Hq, K, T, S, H;
  int64_t G() const { return Hq / K; }
  int64_t H32() const { return (H + 31) / 32 * 32; }  // a tile row holds 32 bfloat16
};

// One task's working space, its slots padded to n32 and its head width to H32, zeros in the
// padding. queries (G, 16, H32) bfloat16, a tile of sixteen positions per head; keys (n32 / 16,
// H32 / 2, 16) pairs of bfloat16, a tile of sixteen slots' element pairs; values (n32 / 2, H32)
// pairs of two slots' element h; biases (16, n32) float32 (-inf past the slots read); logits and
// sums (G * 16, n32 and H32) float32; probabilities (G * 16, n32) bfloat16.
struct Scratch {
  std::vector<uint16_t> queries, probs;
  std::vector<uint32_t> keys, values;
  std::vector<float> biases, logits, sums;
};

// The tiles' shapes (palette 1): 0-3 float32 sums of 16 x 16, 4-6 bfloat16 operands of 16 x 32.
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};

// Linux lends a process the tile registers on request; XLA's own AMX kernels ask too.
bool tiles_granted() {
  static const bool granted = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
  return granted;
}

// Tiles configured for this kernel for a scope; the thread's previous configuration (XLA's
// kernels') restored after it.
class Tiles {
 public:
  Tiles() {
    _tile_storeconfig(&saved_);
    TileConfig mine;
    for (int t = 0; t < 7; ++t) {
      mine.rows[t] = 16;
      mine.bytes_per_row[t] = 64;
    }
    _tile_loadconfig(&mine);
  }
  ~Tiles() {
    if (saved_.palette) _tile_loadconfig(&saved_);
    else _tile_release();
  }

 private:
  TileConfig saved_;
};

// The last slot + 1 that a query with this bias row sees; S where it sees none (a pad query: the
// plain form gives it uniform weights over all S slots).
int64_t visible_end(const uint16_t* bias_row, int64_t S) {
  int64_t j = S;
  for (; j % 16; --j)
    if (bf16_widen(bias_row[j - 1]) > kHidden) return j;
  for (; j > 0; j -= 16) {
    const __mmask16 seen = _mm512_cmp_ps_mask(widen16(bias_row + j - 16), _mm512_set1_ps(kHidden), _CMP_GT_OQ);
    if (seen) return j - 16 + 32 - __builtin_clz(uint32_t(seen));
  }
  return S;
}

inline __mmask32 first(int64_t count) { return count >= 32 ? ~__mmask32(0) : __mmask32((1u << count) - 1); }

// The operands of row b, KV head kh, positions t0..t0+P, slots 0..n, into the scratch.
void load(const Shape& d, const uint16_t* q, const uint16_t* k, const uint16_t* v, const uint16_t* bias, int64_t b,
          int64_t kh, int64_t t0, int64_t P, int64_t n, int64_t n32, Scratch& s) {
  const int64_t G = d.G(), H = d.H, H32 = d.H32();
  s.queries.assign(G * 16 * H32, 0);
  for (int64_t g = 0; g < G; ++g)
    for (int64_t t = 0; t < P; ++t)
      std::memcpy(&s.queries[(g * 16 + t) * H32], q + ((b * d.Hq + kh * G + g) * d.T + t0 + t) * H, H * 2);
  const uint16_t* keys = k + (b * d.K + kh) * d.S * H;
  const uint16_t* values = v + (b * d.K + kh) * d.S * H;
  s.keys.assign(n32 * H32 / 2, 0);
  // Sixteen slots' pair p in one gather: slot j's at 32-bit word j * H / 2 + p.
  const __m512i rows = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                          _mm512_set1_epi32(int(H / 2)));
  for (int64_t j0 = 0; j0 < n; j0 += 16) {
    const __mmask16 inside = __mmask16(first(std::min<int64_t>(16, n - j0)));
    for (int64_t p = 0; p < H / 2; ++p) {
      const __m512i pair = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), inside, rows, keys + j0 * H + 2 * p, 4);
      _mm512_storeu_si512(&s.keys[(j0 / 16 * (H32 / 2) + p) * 16], pair);
    }
  }
  s.values.resize(n32 / 2 * H32);
  for (int64_t m = 0; m < n32 / 2; ++m)
    for (int64_t h = 0; h < H32; h += 16) {
      const __mmask16 cols = __mmask16(first(std::max<int64_t>(0, std::min<int64_t>(16, H - h))));
      const __m256i even = _mm256_maskz_loadu_epi16(2 * m < n ? cols : 0, values + 2 * m * H + h);
      const __m256i odd = _mm256_maskz_loadu_epi16(2 * m + 1 < n ? cols : 0, values + (2 * m + 1) * H + h);
      const __m512i word = _mm512_or_si512(_mm512_cvtepu16_epi32(even), _mm512_slli_epi32(_mm512_cvtepu16_epi32(odd), 16));
      _mm512_storeu_si512(&s.values[m * H32 + h], word);
    }
  s.biases.resize(16 * n32);
  for (int64_t t = 0; t < P; ++t)
    for (int64_t j = 0; j < n32; ++j)
      s.biases[t * n32 + j] = j < n ? bf16_widen(bias[(b * d.T + t0 + t) * d.S + j]) : -INFINITY;
}

// `count` (2 or 4) tiles of float32 sums side by side from c (16 x 16 each, rows c_stride bytes
// apart): the sum over `steps` of A (16 x 32 bfloat16 from a, rows a_stride bytes apart, 32
// columns further each step) times each B tile (16 pairs x 16 columns from b, b_step words apart,
// rows b_stride bytes apart, b_advance words further each step).
template <int count>
void tile_products(const uint16_t* a, int64_t a_stride, int64_t steps, const uint32_t* b, int64_t b_stride,
                   int64_t b_step, int64_t b_advance, float* c, int64_t c_stride) {
  _tile_zero(0);
  _tile_zero(1);
  if constexpr (count > 2) {
    _tile_zero(2);
    _tile_zero(3);
  }
  for (int64_t i = 0; i < steps; ++i, a += 32, b += b_advance) {
    _tile_loadd(4, a, a_stride);
    _tile_loadd(5, b, b_stride);
    _tile_dpbf16ps(0, 4, 5);
    _tile_loadd(6, b + b_step, b_stride);
    _tile_dpbf16ps(1, 4, 6);
    if constexpr (count > 2) {
      _tile_loadd(5, b + 2 * b_step, b_stride);
      _tile_dpbf16ps(2, 4, 5);
      _tile_loadd(6, b + 3 * b_step, b_stride);
      _tile_dpbf16ps(3, 4, 6);
    }
  }
  _tile_stored(0, c, c_stride);
  _tile_stored(1, c + 16, c_stride);
  if constexpr (count > 2) {
    _tile_stored(2, c + 32, c_stride);
    _tile_stored(3, c + 48, c_stride);
  }
}

// Head g's sixteen queries' sums against blocks of sixteen slots, `count` from `block`.
template <int count>
void scores(const Scratch& s, int64_t H32, int64_t n32, int64_t g, int64_t block, float* logits) {
  const int64_t pairs = H32 / 2;
  tile_products<count>(&s.queries[g * 16 * H32], H32 * 2, H32 / 32, &s.keys[block * pairs * 16], 64, pairs * 16,
                       16 * 16, logits + g * 16 * n32 + block * 16, n32 * 4);
}

// Head g's sixteen rows of probabilities times values, `count` chunks of sixteen columns from
// `chunk`.
template <int count>
void weighted(const Scratch& s, int64_t H32, int64_t n32, int64_t g, int64_t chunk, float* sums) {
  tile_products<count>(&s.probs[g * 16 * n32], n32 * 2, n32 / 32, &s.values[chunk * 16], H32 * 4, 16, 16 * H32,
                       sums + g * 16 * H32 + chunk * 16, H32 * 4);
}

// One query's sums over n32 slots -> scores rounded, scaled and rounded, plus its bias -> its
// probabilities, rounded to bfloat16.
void softmax(float* x, const float* bias, int64_t n32, float scale, uint16_t* p) {
  __m512 top = _mm512_set1_ps(-INFINITY);
  for (int64_t j = 0; j < n32; j += 16) {
    const __m512 score = round16(_mm512_mul_ps(round16(_mm512_loadu_ps(x + j)), _mm512_set1_ps(scale)));
    const __m512 logit = _mm512_add_ps(score, _mm512_loadu_ps(bias + j));
    _mm512_storeu_ps(x + j, logit);
    top = _mm512_max_ps(top, logit);
  }
  const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(top));
  __m512 total = _mm512_setzero_ps();
  for (int64_t j = 0; j < n32; j += 16) {
    const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + j), m));
    _mm512_storeu_ps(x + j, e);
    total = _mm512_add_ps(total, e);
  }
  const __m512 sum = _mm512_set1_ps(_mm512_reduce_add_ps(total));
  for (int64_t j = 0; j < n32; j += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + j), halves16(round16(_mm512_div_ps(_mm512_loadu_ps(x + j), sum))));
}

// This thread's scratch, looked up once per task (a thread_local's every use in a shared library
// is a call).
__attribute__((noinline)) Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

// Row b, KV head kh, query positions t0..t0+P (P <= 16).
void attend(const Shape& d, const uint16_t* q, const uint16_t* k, const uint16_t* v, const uint16_t* bias,
            float scale, uint16_t* out, int64_t b, int64_t kh, int64_t t0, int64_t P) {
  Scratch& s = scratch();
  const int64_t G = d.G(), H = d.H, H32 = d.H32();
  int64_t n = 0;
  for (int64_t t = 0; t < P; ++t) n = std::max(n, visible_end(bias + (b * d.T + t0 + t) * d.S, d.S));
  const int64_t n32 = (n + 31) / 32 * 32;
  load(d, q, k, v, bias, b, kh, t0, P, n, n32, s);
  s.logits.resize(G * 16 * n32);
  s.probs.assign(G * 16 * n32, 0);  // padding positions: no weight
  s.sums.resize(G * 16 * H32);
  Tiles tiles;
  for (int64_t g = 0; g < G; ++g) {
    // Slot blocks and column chunks of 16 come in pairs (n32 and H32 are multiples of 32).
    int64_t i = 0;
    for (; i + 4 <= n32 / 16; i += 4) scores<4>(s, H32, n32, g, i, s.logits.data());
    if (i < n32 / 16) scores<2>(s, H32, n32, g, i, s.logits.data());
    for (int64_t t = 0; t < P; ++t)
      softmax(&s.logits[(g * 16 + t) * n32], &s.biases[t * n32], n32, scale, &s.probs[(g * 16 + t) * n32]);
    for (i = 0; i + 4 <= H32 / 16; i += 4) weighted<4>(s, H32, n32, g, i, s.sums.data());
    if (i < H32 / 16) weighted<2>(s, H32, n32, g, i, s.sums.data());
  }
  for (int64_t g = 0; g < G; ++g)
    for (int64_t t = 0; t < P; ++t) {
      uint16_t* to = out + ((b * d.Hq + kh * G + g) * d.T + t0 + t) * H;
      const float* from = &s.sums[(g * 16 + t) * H32];
      for (int64_t h = 0; h < H; h += 16) {
        const __mmask16 cols = __mmask16(first(std::min<int64_t>(16, H - h)));
        _mm256_mask_storeu_epi16(to + h, cols, halves16(round16(_mm512_loadu_ps(from + h))));
      }
    }
}

ffi::Error PrefillAttention(ffi::ThreadPool pool, ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                            ffi::AnyBuffer bias, ffi::Result<ffi::AnyBuffer> out, float scale) {
  const auto qd = q.dimensions(), kd = k.dimensions(), bd = bias.dimensions();
  const bool shapes = qd.size() == 4 && kd.size() == 4 && bd.size() == 4 && kd[0] == qd[0] && kd[3] == qd[3] &&
                      kd[3] % 2 == 0 && kd[1] > 0 && qd[1] % kd[1] == 0 && v.dimensions().size() == 4 &&
                      std::equal(kd.begin(), kd.end(), v.dimensions().begin()) && bd[0] == qd[0] && bd[1] == 1 &&
                      bd[2] == qd[2] && bd[3] == kd[2] && kd[2] > 0;
  const bool types = q.element_type() == ffi::DataType::BF16 && k.element_type() == ffi::DataType::BF16 &&
                     v.element_type() == ffi::DataType::BF16 && bias.element_type() == ffi::DataType::BF16;
  if (!shapes || !types)
    return ffi::Error::InvalidArgument(
        "prefill_attention: q (B, G*K, T, H), keys and values (B, K, S, H), bias (B, 1, T, S), H even, all bfloat16");
  if (!tiles_granted()) return ffi::Error::Internal("prefill_attention: Linux refused this process the AMX tiles");
  const Shape d{qd[0], qd[1], kd[1], qd[2], kd[2], kd[3]};
  const auto* qp = static_cast<const uint16_t*>(q.untyped_data());
  const auto* kp = static_cast<const uint16_t*>(k.untyped_data());
  const auto* vp = static_cast<const uint16_t*>(v.untyped_data());
  const auto* bp = static_cast<const uint16_t*>(bias.untyped_data());
  auto* op = static_cast<uint16_t*>(out->untyped_data());
  const int64_t blocks = (d.T + kPositions - 1) / kPositions;
  // The last blocks of a causal chunk read the most slots: they are taken first.
  ffi_chunks::run(pool, d.B * d.K * blocks, [=](int64_t task) {
    const int64_t block = blocks - 1 - task % blocks, head = task / blocks, t0 = block * kPositions;
    attend(d, qp, kp, vp, bp, scale, op, head / d.K, head % d.K, t0, std::min(kPositions, d.T - t0));
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(cpu_prefill_attention, PrefillAttention,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<float>("scale"));
