// AVX-512 VNNI kernels (EVEX vpdpbusd on 512-bit registers): two 32-blocks per register, tiles
// of 4 rows x 4 tokens (16 accumulators of the 32 registers). An odd last block uses masked
// loads, so no byte past a row is read. The f32 and f16 paths are AVX2's.
#include "csrc/runtime/kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>

namespace gemini::runtime {
namespace {

inline float ScaleOf(const QMatrix& w, const uint16_t* s) {
  return w.bf16_scales ? BF16ToF32(*s) : _cvtsh_ss(*s);
}

// 64 unsigned weights of blocks b, b+1 in element order; `one` = only block b exists.
template <WFormat F>
inline __m512i Unpack2(const uint8_t* p, bool one) {
  if (F == WFormat::kQ8)
    return one ? _mm512_maskz_loadu_epi8(0xFFFFFFFFULL, p) : _mm512_loadu_si512(p);
  __m256i v = one ? _mm256_maskz_loadu_epi8(0xFFFFu, p) : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  const __m256i mask = _mm256_set1_epi8(0x0F);
  __m256i lo = _mm256_and_si256(v, mask), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
  __m512i z = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);  // [lo0 lo1 hi0 hi1]
  return _mm512_shuffle_i64x2(z, z, _MM_SHUFFLE(3, 1, 2, 0));         // [lo0 hi0 lo1 hi1]
}

template <WFormat F, int R, int T>
void Tile(const QMatrix& w, const QActs& x, int r, int i0, float* y, int ldy) {
  const int nb = w.kp / 32, spr = w.kp / w.group, bpg = w.group / 32;
  const int bytes = F == WFormat::kQ8 ? 32 : 16;
  const uint8_t* rows[R];
  for (int a = 0; a < R; ++a) rows[a] = w.packed + static_cast<size_t>(r + a) * w.RowBytes();
  __m512 acc[R][T];
  float corr[R][T];
  for (int a = 0; a < R; ++a)
    for (int c = 0; c < T; ++c) { acc[a][c] = _mm512_setzero_ps(); corr[a][c] = 0.f; }
  for (int b = 0; b < nb; b += 2) {
    const bool one = b + 1 == nb;
    const __mmask16 lanes = one ? 0x00FF : 0xFFFF;
    __m512i u[R];
    __m512 dw[R];
    float mw[R][2];
    for (int a = 0; a < R; ++a) {
      u[a] = Unpack2<F>(rows[a] + b * bytes, one);
      const uint16_t* s = w.scales + static_cast<size_t>(r + a) * spr;
      float d0 = ScaleOf(w, s + b / bpg), d1 = one ? 0.f : ScaleOf(w, s + (b + 1) / bpg);
      dw[a] = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(d0), _mm512_set1_ps(d1));
      if (F == WFormat::kQ4Min) {
        const uint16_t* m = w.mins + static_cast<size_t>(r + a) * nb + b;
        mw[a][0] = _cvtsh_ss(m[0]);
        mw[a][1] = one ? 0.f : _cvtsh_ss(m[1]);
      }
    }
    for (int c = 0; c < T; ++c) {
      const size_t o = static_cast<size_t>(i0 + c) * nb + b;
      const int8_t* q = x.qrow(i0 + c) + b * 32;
      const __m512i xv = one ? _mm512_maskz_loadu_epi8(0xFFFFFFFFULL, q) : _mm512_loadu_si512(q);
      __m512i init = _mm512_setzero_si512();
      if (F != WFormat::kQ4Min) {
        init = _mm512_maskz_loadu_epi32(lanes, x.bexp.data() + o * 8);
        if (F == WFormat::kQ8) init = _mm512_slli_epi32(init, 4);
      }
      const __m512 dx = _mm512_maskz_loadu_ps(lanes, x.dexp.data() + o * 8);
      for (int a = 0; a < R; ++a) {
        __m512i dot = _mm512_dpbusd_epi32(init, u[a], xv);
        acc[a][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dw[a], dx), acc[a][c]);
        if (F == WFormat::kQ4Min) corr[a][c] += mw[a][0] * x.s[o] + (one ? 0.f : mw[a][1] * x.s[o + 1]);
      }
    }
  }
  for (int a = 0; a < R; ++a)
    for (int c = 0; c < T; ++c)
      y[static_cast<size_t>(i0 + c) * ldy + r + a] = _mm512_reduce_add_ps(acc[a][c]) + corr[a][c];
}

template <WFormat F>
void QMatMulFormat(const QMatrix& w, const QActs& x, float* y, int ldy, int r0, int r1) {
  constexpr int R = 4, T = 4;
  int r = r0;
  for (; r + R <= r1; r += R) {
    int i = 0;
    for (; i + T <= x.t; i += T) Tile<F, R, T>(w, x, r, i, y, ldy);
    for (; i + 2 <= x.t; i += 2) Tile<F, R, 2>(w, x, r, i, y, ldy);
    for (; i < x.t; ++i) Tile<F, R, 1>(w, x, r, i, y, ldy);
  }
  for (; r < r1; ++r) {
    int i = 0;
    for (; i + T <= x.t; i += T) Tile<F, 1, T>(w, x, r, i, y, ldy);
    for (; i < x.t; ++i) Tile<F, 1, 1>(w, x, r, i, y, ldy);
  }
}

void QMatMul512(const QMatrix& w, const QActs& x, float* y, int ldy, int r0, int r1) {
  switch (w.format) {
    case WFormat::kQ4: return QMatMulFormat<WFormat::kQ4>(w, x, y, ldy, r0, r1);
    case WFormat::kQ4Min: return QMatMulFormat<WFormat::kQ4Min>(w, x, y, ldy, r0, r1);
    case WFormat::kQ8: return QMatMulFormat<WFormat::kQ8>(w, x, y, ldy, r0, r1);
  }
}

}  // namespace

const Kernels* Avx512Kernels() {
  static const Kernels k = [] {
    Kernels k = *Avx2Kernels();
    k.name = "avx512";
    k.qmatmul = QMatMul512;
    return k;
  }();
  return &k;
}

}  // namespace gemini::runtime

#else
namespace gemini::runtime {
const Kernels* Avx512Kernels() { return nullptr; }
}  // namespace gemini::runtime
#endif
