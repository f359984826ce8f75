#include "csrc/runtime/kernels.h"

#include <immintrin.h>

#include <cstring>
#include <stdexcept>
#include <vector>

namespace gemini::runtime {

float F16ToF32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1F, mant = h & 0x3FF, bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // Subnormal: renormalise.
      int e = -1;
      do { ++e; mant <<= 1; } while ((mant & 0x400) == 0);
      bits = sign | ((127 - 15 - e) << 23) | ((mant & 0x3FF) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7F800000 | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

float BF16ToF32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

namespace {

inline float Scale(const Int4Matrix& w, const uint16_t* s) {
  return w.bf16_scales ? BF16ToF32(*s) : F16ToF32(*s);
}

// Decodes row r into out[kp] (q * scale).
void DecodeRowScalar(const Int4Matrix& w, int r, float* out) {
  const uint8_t* p = w.packed + static_cast<size_t>(r) * (w.kp / 2);
  const uint16_t* s = w.scales + static_cast<size_t>(r) * (w.kp / w.group);
  for (int b = 0; b < w.kp / 32; ++b) {
    float sc = Scale(w, s + (b * 32) / w.group);
    for (int j = 0; j < 16; ++j) {
      uint8_t byte = p[b * 16 + j];
      out[b * 32 + j] = static_cast<float>(static_cast<int>(byte & 0xF) - 8) * sc;
      out[b * 32 + 16 + j] = static_cast<float>(static_cast<int>(byte >> 4) - 8) * sc;
    }
  }
}

void MatVecScalar(const Int4Matrix& w, const float* x, float* y, int r0, int r1) {
  const int blocks_per_group = w.group / 32;
  for (int r = r0; r < r1; ++r) {
    const uint8_t* p = w.packed + static_cast<size_t>(r) * (w.kp / 2);
    const uint16_t* s = w.scales + static_cast<size_t>(r) * (w.kp / w.group);
    float acc = 0.f;
    for (int g = 0; g < w.kp / w.group; ++g) {
      float gacc = 0.f;
      for (int b = g * blocks_per_group; b < (g + 1) * blocks_per_group; ++b) {
        const uint8_t* pb = p + b * 16;
        const float* xb = x + b * 32;
        for (int j = 0; j < 16; ++j) {
          gacc += static_cast<float>(static_cast<int>(pb[j] & 0xF) - 8) * xb[j];
          gacc += static_cast<float>(static_cast<int>(pb[j] >> 4) - 8) * xb[16 + j];
        }
      }
      acc += gacc * Scale(w, s + g);
    }
    y[r] = acc;
  }
}

void MatMulScalar(const Int4Matrix& w, const float* x, int t, int ldx, float* y, int ldy, int r0,
                  int r1) {
  std::vector<float> row(w.kp);
  for (int r = r0; r < r1; ++r) {
    DecodeRowScalar(w, r, row.data());
    for (int i = 0; i < t; ++i) {
      const float* xi = x + static_cast<size_t>(i) * ldx;
      float acc = 0.f;
      for (int k = 0; k < w.kp; ++k) acc += row[k] * xi[k];
      y[static_cast<size_t>(i) * ldy + r] = acc;
    }
  }
}

// ---- AVX2 + FMA: 16 bytes -> 32 signed nibbles -> 4 x 8 floats against 32 activations. ----
// Scales convert with the F16C instruction (every AVX2 CPU has it; checked at selection).
__attribute__((target("avx2,fma,f16c"))) inline float ScaleFast(const Int4Matrix& w, const uint16_t* s) {
  return w.bf16_scales ? BF16ToF32(*s) : _cvtsh_ss(*s);
}

__attribute__((target("avx2,fma,f16c"))) inline float HSum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
  return _mm_cvtss_f32(lo);
}

__attribute__((target("avx2,fma,f16c"))) inline void Nibbles(const uint8_t* pb, __m256* w0, __m256* w1,
                                                         __m256* w2, __m256* w3) {
  const __m128i mask = _mm_set1_epi8(0x0F), eight = _mm_set1_epi8(8);
  __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(pb));
  __m128i lo = _mm_sub_epi8(_mm_and_si128(bytes, mask), eight);
  __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(bytes, 4), mask), eight);
  *w0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
  *w1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)));
  *w2 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
  *w3 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)));
}

__attribute__((target("avx2,fma,f16c"))) void MatVecAvx2(const Int4Matrix& w, const float* x, float* y,
                                                     int r0, int r1) {
  const int blocks_per_group = w.group / 32;
  const int groups = w.kp / w.group;
  for (int r = r0; r < r1; ++r) {
    const uint8_t* p = w.packed + static_cast<size_t>(r) * (w.kp / 2);
    const uint16_t* s = w.scales + static_cast<size_t>(r) * groups;
    if (r + 1 < r1) _mm_prefetch(reinterpret_cast<const char*>(p + w.kp / 2), _MM_HINT_T0);
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
      acc = _mm256_fmadd_ps(_mm256_add_ps(a0, a1), _mm256_set1_ps(ScaleFast(w, s + g)), acc);
    }
    y[r] = HSum(acc);
  }
}

__attribute__((target("avx2,fma,f16c"))) void MatMulAvx2(const Int4Matrix& w, const float* x, int t,
                                                     int ldx, float* y, int ldy, int r0, int r1) {
  std::vector<float> row_store(w.kp + 8);
  float* row = row_store.data();
  const int groups = w.kp / w.group;
  for (int r = r0; r < r1; ++r) {
    const uint8_t* p = w.packed + static_cast<size_t>(r) * (w.kp / 2);
    const uint16_t* s = w.scales + static_cast<size_t>(r) * groups;
    for (int b = 0; b < w.kp / 32; ++b) {
      __m256 sc = _mm256_set1_ps(ScaleFast(w, s + (b * 32) / w.group));
      __m256 w0, w1, w2, w3;
      Nibbles(p + b * 16, &w0, &w1, &w2, &w3);
      _mm256_storeu_ps(row + b * 32, _mm256_mul_ps(w0, sc));
      _mm256_storeu_ps(row + b * 32 + 8, _mm256_mul_ps(w1, sc));
      _mm256_storeu_ps(row + b * 32 + 16, _mm256_mul_ps(w2, sc));
      _mm256_storeu_ps(row + b * 32 + 24, _mm256_mul_ps(w3, sc));
    }
    int i = 0;
    for (; i + 4 <= t; i += 4) {  // Four tokens per pass over the decoded row.
      const float* x0 = x + static_cast<size_t>(i) * ldx;
      __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0;
      for (int k = 0; k < w.kp; k += 8) {
        __m256 wv = _mm256_loadu_ps(row + k);
        c0 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x0 + k), c0);
        c1 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x0 + ldx + k), c1);
        c2 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x0 + 2 * ldx + k), c2);
        c3 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x0 + 3 * ldx + k), c3);
      }
      y[static_cast<size_t>(i) * ldy + r] = HSum(c0);
      y[static_cast<size_t>(i + 1) * ldy + r] = HSum(c1);
      y[static_cast<size_t>(i + 2) * ldy + r] = HSum(c2);
      y[static_cast<size_t>(i + 3) * ldy + r] = HSum(c3);
    }
    for (; i < t; ++i) {
      const float* xi = x + static_cast<size_t>(i) * ldx;
      __m256 c = _mm256_setzero_ps();
      for (int k = 0; k < w.kp; k += 8) c = _mm256_fmadd_ps(_mm256_loadu_ps(row + k), _mm256_loadu_ps(xi + k), c);
      y[static_cast<size_t>(i) * ldy + r] = HSum(c);
    }
  }
}

const Kernels kScalar = {"scalar", MatVecScalar, MatMulScalar};
const Kernels kAvx2 = {"avx2", MatVecAvx2, MatMulAvx2};

}  // namespace

bool CpuHasAvx2Fma() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
}

const Kernels& SelectKernels(const std::string& which) {
  if (which == "scalar") return kScalar;
  if (which == "avx2") {
    if (!CpuHasAvx2Fma()) throw std::invalid_argument("--kernel=avx2: this CPU has no AVX2+FMA");
    return kAvx2;
  }
  if (which == "auto") return CpuHasAvx2Fma() ? kAvx2 : kScalar;
  throw std::invalid_argument("--kernel='" + which + "': expected auto|avx2|scalar");
}

}  // namespace gemini::runtime
