// AVX2 + FMA + F16C kernels (this translation unit is compiled with those ISA flags and only
// called after CpuSupports("avx2")): int4 x f32 matvec/matmul, int x int8 tiles with
// maddubs/madd, and the f16 KV-cache helpers.
#include "csrc/runtime/kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>

#include <algorithm>
#include <cmath>

namespace gemini::runtime {
namespace {

struct Isa {
  // kQ8 weights are u = q + 128: maddubs(u8, s8) would saturate int16 at 2 * 255 * 127, so they
  // go back to signed and use |w| * sign(x, w) (at most 2 * 128 * 127).
  template <WFormat F>
  static __m256i Prepare(__m256i u) {
    return F == WFormat::kQ8 ? _mm256_xor_si256(u, _mm256_set1_epi8(static_cast<char>(0x80))) : u;
  }
  template <WFormat F>
  static __m256i Init(const QActs& x, size_t o) {
    if (F == WFormat::kQ4) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.bexp.data() + o * 8));
    return _mm256_setzero_si256();
  }
  template <WFormat F>
  static __m256i DotF(__m256i init, __m256i u, __m256i x) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i p;
    if (F == WFormat::kQ8) p = _mm256_maddubs_epi16(_mm256_sign_epi8(u, u), _mm256_sign_epi8(x, u));
    else p = _mm256_maddubs_epi16(u, x);
    return _mm256_add_epi32(init, _mm256_madd_epi16(p, ones));
  }
};

#include "csrc/runtime/kernels_x86_tiles.h"

// ---- f32 activations: 16 bytes -> 32 signed nibbles -> 4 x 8 floats against 32 values. ----
inline void Nibbles(const uint8_t* pb, __m256* w0, __m256* w1, __m256* w2, __m256* w3) {
  const __m128i mask = _mm_set1_epi8(0x0F), eight = _mm_set1_epi8(8);
  __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(pb));
  __m128i lo = _mm_sub_epi8(_mm_and_si128(bytes, mask), eight);
  __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(bytes, 4), mask), eight);
  *w0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
  *w1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)));
  *w2 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
  *w3 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)));
}

void MatVecAvx2(const QMatrix& w, const float* x, float* y, int r0, int r1) {
  if (w.format != WFormat::kQ4) return ScalarKernels().matvec(w, x, y, r0, r1);
  const int blocks_per_group = w.group / 32;
  const int groups = w.kp / w.group;
  for (int r = r0; r < r1; ++r) {
    const uint8_t* p = w.packed + static_cast<size_t>(r) * (w.kp / 2);
    const uint16_t* s = w.scales + static_cast<size_t>(r) * groups;
    __m256 acc = _mm256_setzero_ps();
    for (int g = 0; g < groups; ++g) {
      __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
      for (int b = g * blocks_per_group; b < (g + 1) * blocks_per_group; ++b) {
        __m256 w0, w1, w2, w3;
        Nibbles(p + b * 16, &w0, &w1, &w2, &w3);
        const float* xb = x + b * 32;
        a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xb), a0);
        a1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xb + 8), a1);
        a0 = _mm256_fmadd_ps(w2, _mm256_loadu_ps(xb + 16), a0);
        a1 = _mm256_fmadd_ps(w3, _mm256_loadu_ps(xb + 24), a1);
      }
      acc = _mm256_fmadd_ps(_mm256_add_ps(a0, a1), _mm256_set1_ps(ScaleOf(w, s + g)), acc);
    }
    y[r] = HSum256(acc);
  }
}

// Four rows decoded into a stack buffer per pass, each reused for every token.
void MatMulAvx2(const QMatrix& w, const float* x, int t, int ldx, float* y, int ldy, int r0, int r1) {
  if (w.format != WFormat::kQ4 || w.kp > 16384) return ScalarKernels().matmul(w, x, t, ldx, y, ldy, r0, r1);
  alignas(32) float row[16384];
  const int groups = w.kp / w.group;
  for (int r = r0; r < r1; ++r) {
    const uint8_t* p = w.packed + static_cast<size_t>(r) * (w.kp / 2);
    const uint16_t* s = w.scales + static_cast<size_t>(r) * groups;
    for (int b = 0; b < w.kp / 32; ++b) {
      __m256 sc = _mm256_set1_ps(ScaleOf(w, s + (b * 32) / w.group));
      __m256 w0, w1, w2, w3;
      Nibbles(p + b * 16, &w0, &w1, &w2, &w3);
      _mm256_store_ps(row + b * 32, _mm256_mul_ps(w0, sc));
      _mm256_store_ps(row + b * 32 + 8, _mm256_mul_ps(w1, sc));
      _mm256_store_ps(row + b * 32 + 16, _mm256_mul_ps(w2, sc));
      _mm256_store_ps(row + b * 32 + 24, _mm256_mul_ps(w3, sc));
    }
    int i = 0;
    for (; i + 4 <= t; i += 4) {
      const float* x0 = x + static_cast<size_t>(i) * ldx;
      __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0;
      for (int k = 0; k < w.kp; k += 8) {
        __m256 wv = _mm256_load_ps(row + k);
        c0 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x0 + k), c0);
        c1 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x0 + ldx + k), c1);
        c2 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x0 + 2 * ldx + k), c2);
        c3 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x0 + 3 * ldx + k), c3);
      }
      y[static_cast<size_t>(i) * ldy + r] = HSum256(c0);
      y[static_cast<size_t>(i + 1) * ldy + r] = HSum256(c1);
      y[static_cast<size_t>(i + 2) * ldy + r] = HSum256(c2);
      y[static_cast<size_t>(i + 3) * ldy + r] = HSum256(c3);
    }
    for (; i < t; ++i) {
      const float* xi = x + static_cast<size_t>(i) * ldx;
      __m256 c = _mm256_setzero_ps();
      for (int k = 0; k < w.kp; k += 8) c = _mm256_fmadd_ps(_mm256_load_ps(row + k), _mm256_loadu_ps(xi + k), c);
      y[static_cast<size_t>(i) * ldy + r] = HSum256(c);
    }
  }
}

float DotF16Avx2(const float* q, const uint16_t* k, int n) {
  __m256 acc = _mm256_setzero_ps();
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 kv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(k + i)));
    acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), kv, acc);
  }
  float s = HSum256(acc);
  for (; i < n; ++i) s += q[i] * _cvtsh_ss(k[i]);
  return s;
}

void AxpyF16Avx2(float a, const uint16_t* v, float* o, int n) {
  __m256 av = _mm256_set1_ps(a);
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 vv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v + i)));
    _mm256_storeu_ps(o + i, _mm256_fmadd_ps(av, vv, _mm256_loadu_ps(o + i)));
  }
  for (; i < n; ++i) o[i] += a * _cvtsh_ss(v[i]);
}

void ToF16Avx2(const float* x, uint16_t* y, int n) {
  int i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
  for (; i < n; ++i) y[i] = _cvtss_sh(x[i], _MM_FROUND_TO_NEAREST_INT);
}

// QuantizeRowScalar's arithmetic 8 lanes at a time (max is exact, x * id and the
// round-to-nearest-even conversion are the same IEEE operations): bit-identical.
void QuantizeRowAvx2(const float* x, int nb, int8_t* q, float* d, int32_t* sumq) {
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  const __m256i lim = _mm256_set1_epi32(127), nlim = _mm256_set1_epi32(-127);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int b = 0; b < nb; ++b) {
    const float* xb = x + b * 32;
    __m256 v[4], m = _mm256_setzero_ps();
    for (int c = 0; c < 4; ++c) {
      v[c] = _mm256_loadu_ps(xb + 8 * c);
      m = _mm256_max_ps(m, _mm256_and_ps(v[c], absmask));
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
    const float amax = _mm_cvtss_f32(m4);
    const float id = amax > 0.f ? 127.f / amax : 0.f;
    const __m256 vid = _mm256_set1_ps(id);
    __m256i qi[4], sum = _mm256_setzero_si256();
    for (int c = 0; c < 4; ++c) {
      qi[c] = _mm256_cvtps_epi32(_mm256_mul_ps(v[c], vid));
      qi[c] = _mm256_min_epi32(lim, _mm256_max_epi32(nlim, qi[c]));
      sum = _mm256_add_epi32(sum, qi[c]);
    }
    __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(qi[0], qi[1]), _mm256_packs_epi32(qi[2], qi[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + b * 32), _mm256_permutevar8x32_epi32(p, order));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(1, 0, 3, 2)));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(2, 3, 0, 1)));
    d[b] = amax / 127.f;
    sumq[b] = _mm_cvtsi128_si32(s4);
  }
}

void AttendAvx2(const float* q, int nh, int dh, const uint16_t* k, const uint16_t* v, size_t stride,
                int len, float scale, float* scores, float* o) {
  for (int h = 0; h < nh; ++h) {
    float* s = scores + static_cast<size_t>(h) * len;
    const float* qh = q + h * dh;
    float mx = -INFINITY;
    for (int j = 0; j < len; ++j) {
      s[j] = DotF16Avx2(qh, k + j * stride, dh) * scale;
      mx = std::max(mx, s[j]);
    }
    float sum = 0.f;
    for (int j = 0; j < len; ++j) { s[j] = std::exp(s[j] - mx); sum += s[j]; }
    const float inv = 1.0f / sum;
    float* oh = o + h * dh;
    std::fill(oh, oh + dh, 0.f);
    for (int j = 0; j < len; ++j) {
      s[j] *= inv;
      AxpyF16Avx2(s[j], v + j * stride, oh, dh);
    }
  }
}

const Kernels kAvx2 = {"avx2", MatVecAvx2, MatMulAvx2, QMatMul256<4, 2>,
                       DotF16Avx2, AxpyF16Avx2, ToF16Avx2, 4, QuantizeRowAvx2, AttendAvx2};

}  // namespace

const Kernels* Avx2Kernels() { return &kAvx2; }

}  // namespace gemini::runtime

#else
namespace gemini::runtime {
const Kernels* Avx2Kernels() { return nullptr; }
}  // namespace gemini::runtime
#endif
