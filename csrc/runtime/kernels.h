// Quantised-weight matrix kernels: int4/int8 weights x f32 or int8 activations.
//
// Weight formats (row-major, 32-element blocks; element value = u * d + m, u unsigned):
//   kQ4     nibbles [n, kp/2] then scales d [n, kp/group] (f16|bf16); m = -8 d. In block b of a
//           row, byte j holds element j (low nibble) and element j+16 (high nibble). This is the
//           .gnb int4 layout (py/gemini/export/FORMAT.md); GGUF Q4_0 repacks to it exactly.
//   kQ4Min  the same nibbles, scales d and mins m f16 [n, kp/32] (GGUF Q4_1).
//   kQ8     bytes u = q + 128 [n, kp], scales d f16 [n, kp/32]; m = -128 d (GGUF Q8_0).
//
// Activations for the integer path are quantised per 32-block (QuantizeActs): q = round(x / dx),
// dx = max|x| / 127, so a block's dot is dw * dx * sum(u * q) + m * dx * sum(q), the integer
// sum done with maddubs (AVX2), vpdpbusd (AVX-VNNI / AVX-512 VNNI) or sdot (NEON).
//
// Implementations: portable scalar (the reference), AVX2+FMA+F16C, AVX-VNNI, AVX-512 VNNI,
// AMX-INT8 (several tokens; AVX-512 otherwise) and NEON+dotprod, each in its own translation
// unit built for its ISA and chosen at run time.
#ifndef GEMINI_CSRC_RUNTIME_KERNELS_H_
#define GEMINI_CSRC_RUNTIME_KERNELS_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace gemini::runtime {

enum class WFormat : uint8_t { kQ4 = 0, kQ4Min = 1, kQ8 = 2 };

struct QMatrix {
  WFormat format = WFormat::kQ4;
  int n = 0;            // output rows
  int k = 0;            // input features
  int kp = 0;           // k rounded up to the group size (row length in elements)
  int group = 32;       // elements per scale (a multiple of 32; 32 for kQ4Min/kQ8)
  bool bf16_scales = false;
  const uint8_t* packed = nullptr;    // [n, RowBytes()]
  const uint16_t* scales = nullptr;   // [n, kp/group]
  const uint16_t* mins = nullptr;     // [n, kp/32] (kQ4Min only)
  // A copy in a kernel's own layout (Kernels::pack; null if none), for the whole 16-row tiles
  // (rows past the last one are not in it). AMX: per (tile, 32-block), kQ4/kQ4Min 256 bytes of
  // nibbles, byte 64 g + 4 n + j holding element 4g+j (low) and 16+4g+j (high) of the tile's row
  // n; kQ8 512 bytes, byte 64 kk + 4 n + j = element 4kk+j of row n minus 128 (int8); and the
  // block's 16 scales (and kQ4Min mins), f16/bf16 bits as in `scales`, [n/16, kp/32, 16].
  const uint8_t* tiles = nullptr;
  const uint16_t* tile_scales = nullptr;
  const uint16_t* tile_mins = nullptr;

  size_t RowBytes() const { return format == WFormat::kQ8 ? kp : kp / 2; }
  // Bytes of weights + scales (+ mins) the matrix occupies.
  uint64_t Bytes() const;
};
using Int4Matrix = QMatrix;

// Storage for QMatrix::tiles and friends (owned by whoever owns the matrix view).
struct PackedTiles {
  std::vector<uint8_t> tiles;
  std::vector<uint16_t> scales, mins;
};
// Fills `out` from w's packed data and points w's tile fields at it.
using PackFn = void (*)(QMatrix* w, PackedTiles* out);

// Activations quantised to int8 per 32-block, for t rows of kp features.
struct QActs {
  int t = 0, kp = 0;
  std::vector<int8_t> q;       // [t, kp]
  std::vector<float> d;        // [t, kp/32] block scales dx
  std::vector<float> s;        // [t, kp/32] dx * sum(q) (the m term)
  std::vector<int32_t> sumq;   // [t, kp/32] sum(q)
  std::vector<float> dexp;     // [t, kp/32, 8] dx repeated 8x (vector kernels load it whole)
  std::vector<int32_t> bexp;   // [t, kp/32, 8] -sum(q) repeated 8x (folds m = -8 d into the sum)
  // The same values regrouped for kernels that unpack 4 int4 blocks (64 bytes) per register:
  // nb4 = kp/32 rounded up to 4, padding blocks zero. Chunk c of a row holds blocks 4c..4c+3 as
  // 128 bytes: q[4c+l][j] at 16 l + j and q[4c+l][16+j] at 64 + 16 l + j (j < 16), i.e. the
  // low-nibble and high-nibble elements of the four blocks, each in its own 128-bit lane.
  int nb4 = 0;
  std::vector<int8_t> q4;      // [t, nb4 * 32]
  std::vector<float> d4;       // [t, nb4, 4] dx repeated 4x (one 128-bit lane per block)
  std::vector<int32_t> b4;     // [t, nb4, 4] -2 sum(q) (4 lanes: -8 sum(q), m = -8 d)
  std::vector<float> s4;       // [t, nb4, 4] dx sum(q) / 4 (4 lanes: the m term of kQ4Min)
  // Block-major copies for kernels that run one weight block against every token in turn (the
  // AVX-512 tile kernels): block b of token i at [b * t + i], so a block's tokens sit at fixed
  // offsets from one pointer.
  std::vector<int8_t> qb;      // [kp/32, t, 32] q
  std::vector<float> db;       // [kp/32, t] dx
  std::vector<float> sb;       // [kp/32, t] dx * sum(q)
  std::vector<int32_t> ob;     // [kp/32, t] -8 sum(q) (kQ4's offset term, m = -8 d)
  const int8_t* qrow(int i) const { return q.data() + static_cast<size_t>(i) * kp; }
  int blocks() const { return kp / 32; }
};

float F16ToF32(uint16_t h);
float BF16ToF32(uint16_t h);
uint16_t F32ToF16(float f);  // round to nearest even

// Row r of w decoded to floats (kp values): embedding lookups and tests.
void DequantizeRow(const QMatrix& w, int r, float* out);

// One row's blocks: q = round(x / dx) (to nearest even) in [-127, 127] with dx = max|x| / 127
// per 32-block, d = dx, sumq = sum(q), for nb blocks of x.
using QuantizeRowFn = void (*)(const float* x, int nb, int8_t* q, float* d, int32_t* sumq);
void QuantizeRowScalar(const float* x, int nb, int8_t* q, float* d, int32_t* sumq);

// x [t, ldx] (kp features per row; columns >= k are zero) -> out, rows quantised by `row`
// (every ISA's is bit-identical to QuantizeRowScalar). Resizes out's buffers only when they
// grow, so a decode loop does not allocate.
void QuantizeActs(const float* x, int t, int ldx, int kp, QActs* out,
                  QuantizeRowFn row = QuantizeRowScalar);

// y[r] = sum_k W[r, k] * x[k] for rows [r0, r1). x holds kp floats (zeros past k).
using MatVecFn = void (*)(const QMatrix& w, const float* x, float* y, int r0, int r1);
// Y[i, r] = sum_k W[r, k] * X[i, k] for i < t and rows [r0, r1); X rows stride ldx >= kp, Y rows
// stride ldy. Each weight row is decoded once for all t (prefill).
using MatMulFn = void (*)(const QMatrix& w, const float* x, int t, int ldx, float* y, int ldy,
                          int r0, int r1);
// Y[i, r] = sum_b W[r, b] . X[i, b] on int8 activations, for all t rows of x and rows [r0, r1).
// Tiles of rows x tokens: each tile's weights are unpacked once into registers for all tokens.
using QMatMulFn = void (*)(const QMatrix& w, const QActs& x, float* y, int ldy, int r0, int r1);
// f16 KV cache helpers: dot(q, k) and o += a * v over n elements.
using DotF16Fn = float (*)(const float* q, const uint16_t* k, int n);
using AxpyF16Fn = void (*)(float a, const uint16_t* v, float* o, int n);
// f32 -> f16 of n values (KV cache writes).
using ToF16Fn = void (*)(const float* x, uint16_t* y, int n);
// Attention of nh query heads q [nh, dh] (contiguous) sharing one f16 kv head: k, v rows j < len
// at k + j * stride, v + j * stride. o [nh, dh] = softmax(scale * q k^T) v, with `scores`
// [nh, len] as scratch (left holding the probabilities).
using AttendF16Fn = void (*)(const float* q, int nh, int dh, const uint16_t* k, const uint16_t* v,
                             size_t stride, int len, float scale, float* scores, float* o);
void AttendF16Scalar(const float* q, int nh, int dh, const uint16_t* k, const uint16_t* v,
                     size_t stride, int len, float scale, float* scores, float* o);

// The gated MLP's elementwise step: g[i] = act(g[i]) * u[i], act = gelu-tanh or silu.
using GatedActFn = void (*)(float* g, const float* u, int n, bool gelu);
void GatedActScalar(float* g, const float* u, int n, bool gelu);

struct Kernels {
  const char* name;
  MatVecFn matvec;     // f32 activations (the accuracy reference path)
  MatMulFn matmul;
  QMatMulFn qmatmul;   // int8 activations
  DotF16Fn dot_f16;
  AxpyF16Fn axpy_f16;
  ToF16Fn to_f16;
  int row_tile;        // ParallelFor alignment that keeps qmatmul's row tiles whole
  QuantizeRowFn quantize_row = QuantizeRowScalar;
  AttendF16Fn attend_f16 = AttendF16Scalar;
  GatedActFn gated_act = GatedActScalar;
  PackFn pack = nullptr;  // a kernel that wants its own weight layout (QMatrix::tiles)
};

// The portable reference (always available).
const Kernels& ScalarKernels();
// ISA implementations: nullptr when not compiled in (another architecture).
const Kernels* Avx2Kernels();
const Kernels* AvxVnniKernels();
const Kernels* Avx512Kernels();
// AMX-INT8 tiles for several tokens (the AVX-512 kernels otherwise); AmxUsable: the OS granted
// this process the tile state.
const Kernels* AmxKernels();
bool AmxUsable();
const Kernels* NeonKernels();

// Which of the ISA paths this CPU can run, by name ("avx2", "avxvnni", "avx512", "amx", "neon").
bool CpuSupports(const std::string& isa);
// "auto" (the fastest the CPU has), "scalar", "avx2", "avxvnni", "avx512", "amx" or "neon". Throws
// std::invalid_argument for an unknown name or an ISA the CPU (or this build) lacks.
const Kernels& SelectKernels(const std::string& which = "auto");
// Every kernel name this build knows and this CPU runs, reference first.
std::vector<std::string> AvailableKernels();
// A one-line description of the CPU (model name) and the ISA features the kernels use.
std::string CpuDescription();
bool CpuHasAvx2Fma();

}  // namespace gemini::runtime

#endif  // GEMINI_CSRC_RUNTIME_KERNELS_H_
