// int4 x f32 matrix-vector and matrix-matrix kernels over the .gnb int4 layout
// (FORMAT.md: row-major [N, Kp/2] packed 32-blocks, then f16|bf16 scales [N, Kp/g]).
// Two implementations — portable scalar C++ and AVX2+FMA(+F16C) — chosen at run time.
#ifndef GEMINI_CSRC_RUNTIME_KERNELS_H_
#define GEMINI_CSRC_RUNTIME_KERNELS_H_

#include <cstdint>
#include <string>

namespace gemini::runtime {

struct Int4Matrix {
  int n = 0;            // output rows
  int k = 0;            // input features
  int kp = 0;           // k rounded up to the group size (row length in nibbles)
  int group = 32;
  bool bf16_scales = false;
  const uint8_t* packed = nullptr;    // [n, kp/2]
  const uint16_t* scales = nullptr;   // [n, kp/group]
};

float F16ToF32(uint16_t h);
float BF16ToF32(uint16_t h);

// y[r] = sum_k W[r, k] * x[k] for rows [r0, r1). x must hold kp floats (zeros past k).
using MatVecFn = void (*)(const Int4Matrix& w, const float* x, float* y, int r0, int r1);
// Y[t, r] = sum_k W[r, k] * X[t, k] for t < T and rows [r0, r1); X rows have stride ldx >= kp,
// Y rows stride ldy. Each weight row is decoded once for all T (prefill).
using MatMulFn = void (*)(const Int4Matrix& w, const float* x, int t, int ldx, float* y, int ldy,
                          int r0, int r1);

struct Kernels {
  const char* name;
  MatVecFn matvec;
  MatMulFn matmul;
};

// "scalar", "avx2" or "auto" (AVX2+FMA when the CPU has them). Throws std::invalid_argument
// for an unknown name or "avx2" on a CPU without it.
const Kernels& SelectKernels(const std::string& which = "auto");
bool CpuHasAvx2Fma();

}  // namespace gemini::runtime

#endif  // GEMINI_CSRC_RUNTIME_KERNELS_H_
