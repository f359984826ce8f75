// NEON + dot-product (sdot) kernels for aarch64: the int8-activation tiles with signed weights
// (u - offset, which fits int8 for every format) against int8 activations, 16 lanes per sdot.
// The f32 and f16 paths use the scalar reference. Built only for aarch64 (-march=armv8.2-a+dotprod);
// elsewhere NeonKernels() is null.
#include "csrc/runtime/kernels.h"

#if defined(__aarch64__) && defined(__ARM_FEATURE_DOTPROD)
#include <arm_neon.h>

namespace gemini::runtime {
namespace {

inline float ScaleOf(const QMatrix& w, const uint16_t* s) {
  return w.bf16_scales ? BF16ToF32(*s) : F16ToF32(*s);
}

// Signed weights of one block: lo = elements 0..15, hi = 16..31.
template <WFormat F>
inline void Weights(const uint8_t* p, int8x16_t* lo, int8x16_t* hi) {
  if (F == WFormat::kQ8) {
    const uint8x16_t flip = vdupq_n_u8(0x80);
    *lo = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(p), flip));
    *hi = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(p + 16), flip));
    return;
  }
  uint8x16_t b = vld1q_u8(p);
  int8x16_t l = vreinterpretq_s8_u8(vandq_u8(b, vdupq_n_u8(0x0F)));
  int8x16_t h = vreinterpretq_s8_u8(vshrq_n_u8(b, 4));
  if (F == WFormat::kQ4) {  // u - 8; kQ4Min keeps u and adds m * dx * sum(q)
    l = vsubq_s8(l, vdupq_n_s8(8));
    h = vsubq_s8(h, vdupq_n_s8(8));
  }
  *lo = l;
  *hi = h;
}

template <WFormat F, int R>
void Rows(const QMatrix& w, const QActs& x, int r, float* y, int ldy) {
  const int nb = w.kp / 32, spr = w.kp / w.group, bpg = w.group / 32;
  const int bytes = F == WFormat::kQ8 ? 32 : 16;
  for (int i = 0; i < x.t; ++i) {
    float32x4_t acc[R];
    float corr[R];
    for (int a = 0; a < R; ++a) { acc[a] = vdupq_n_f32(0.f); corr[a] = 0.f; }
    const int8_t* q = x.qrow(i);
    for (int b = 0; b < nb; ++b) {
      const size_t o = static_cast<size_t>(i) * nb + b;
      int8x16_t x0 = vld1q_s8(q + b * 32), x1 = vld1q_s8(q + b * 32 + 16);
      for (int a = 0; a < R; ++a) {
        const uint8_t* row = w.packed + static_cast<size_t>(r + a) * w.RowBytes();
        int8x16_t lo, hi;
        Weights<F>(row + b * bytes, &lo, &hi);
        int32x4_t dot = vdotq_s32(vdotq_s32(vdupq_n_s32(0), lo, x0), hi, x1);
        float dw = ScaleOf(w, w.scales + static_cast<size_t>(r + a) * spr + b / bpg);
        acc[a] = vmlaq_n_f32(acc[a], vcvtq_f32_s32(dot), dw * x.d[o]);
        if (F == WFormat::kQ4Min) corr[a] += F16ToF32(w.mins[static_cast<size_t>(r + a) * nb + b]) * x.s[o];
      }
    }
    for (int a = 0; a < R; ++a) y[static_cast<size_t>(i) * ldy + r + a] = vaddvq_f32(acc[a]) + corr[a];
  }
}

template <WFormat F>
void QMatMulFormat(const QMatrix& w, const QActs& x, float* y, int ldy, int r0, int r1) {
  int r = r0;
  for (; r + 4 <= r1; r += 4) Rows<F, 4>(w, x, r, y, ldy);
  for (; r < r1; ++r) Rows<F, 1>(w, x, r, y, ldy);
}

void QMatMulNeon(const QMatrix& w, const QActs& x, float* y, int ldy, int r0, int r1) {
  switch (w.format) {
    case WFormat::kQ4: return QMatMulFormat<WFormat::kQ4>(w, x, y, ldy, r0, r1);
    case WFormat::kQ4Min: return QMatMulFormat<WFormat::kQ4Min>(w, x, y, ldy, r0, r1);
    case WFormat::kQ8: return QMatMulFormat<WFormat::kQ8>(w, x, y, ldy, r0, r1);
  }
}

}  // namespace

const Kernels* NeonKernels() {
  static const Kernels k = [] {
    Kernels k = ScalarKernels();
    k.name = "neon";
    k.qmatmul = QMatMulNeon;
    k.row_tile = 4;
    return k;
  }();
  return &k;
}

}  // namespace gemini::runtime

#else
namespace gemini::runtime {
const Kernels* NeonKernels() { return nullptr; }
}  // namespace gemini::runtime
#endif
