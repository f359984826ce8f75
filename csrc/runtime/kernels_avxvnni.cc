// AVX-VNNI kernels (VEX vpdpbusd on 256-bit registers; Alder Lake+, Zen 5): the int8-activation
// tiles of kernels_x86_tiles.h with the u8 x s8 dot in one instruction. The f32 and f16 paths
// are AVX2's.
#include "csrc/runtime/kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>

#include <cmath>

namespace gemini::runtime {
namespace {

struct Isa {
  template <WFormat F>
  static __m256i Prepare(__m256i u) { return u; }
  // The m = -8 d (kQ4) or -128 d (kQ8) term as an integer start value: -sum(q) per lane x 8
  // lanes = -8 sum(q); x16 for kQ8.
  template <WFormat F>
  static __m256i Init(const QActs& x, size_t o) {
    if (F == WFormat::kQ4Min) return _mm256_setzero_si256();
    __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.bexp.data() + o * 8));
    return F == WFormat::kQ8 ? _mm256_slli_epi32(b, 4) : b;
  }
  template <WFormat F>
  static __m256i DotF(__m256i init, __m256i u, __m256i x) { return _mm256_dpbusd_avx_epi32(init, u, x); }
};

#include "csrc/runtime/kernels_x86_tiles.h"

}  // namespace

const Kernels* AvxVnniKernels() {
  static const Kernels k = [] {
    Kernels k = *Avx2Kernels();
    k.name = "avxvnni";
    k.qmatmul = QMatMul256<4, 2>;  // the 4-row tiles on the rows as stored (no packed copy)
    k.row_tile = 4;
    k.pack = nullptr;
    return k;
  }();
  return &k;
}

}  // namespace gemini::runtime

#else
namespace gemini::runtime {
const Kernels* AvxVnniKernels() { return nullptr; }
}  // namespace gemini::runtime
#endif
