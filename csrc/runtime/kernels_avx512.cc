// AVX-512 VNNI kernels (EVEX vpdpbusd on 512-bit registers): two 32-blocks per register, tiles
// of 4 rows x 4 tokens (16 accumulators of the 32 registers). An odd last block uses masked
// loads, so no byte past a row is read. The f32 and f16 paths are AVX2's.
#include "csrc/runtime/kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>

#include <algorithm>
#include <cmath>

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

// ---- kQ4 / kQ4Min: four 32-blocks (64 bytes of nibbles) per 512-bit load. ----
// Each 128-bit lane holds one block: its low nibbles (elements 0..15) against QActs::q4's low
// half, its high nibbles (16..31) against the high half, two vpdpbusd into 4 int32 lanes per
// block, then one fma with the lane's dw * dx. A ragged last chunk uses masked loads (zeros).
enum class ScaleKind { kF16G32, kBF16G32, kGeneric };

// The 4 scales of blocks b..b+3 (nblk < 4: a ragged last chunk, zeros past it). `s` is the
// row's scales.
template <ScaleKind S>
inline __m128 Scales4(const QMatrix& w, const uint16_t* s, int b, int nblk) {
  if (S == ScaleKind::kGeneric) {
    float v[4] = {0.f, 0.f, 0.f, 0.f};
    for (int l = 0; l < nblk; ++l) v[l] = ScaleOf(w, s + ((b + l) * 32) / w.group);
    return _mm_loadu_ps(v);
  }
  __m128i raw = nblk == 4 ? _mm_loadl_epi64(reinterpret_cast<const __m128i*>(s + b))
                          : _mm_maskz_loadu_epi16(static_cast<__mmask8>((1u << nblk) - 1), s + b);
  if (S == ScaleKind::kF16G32) return _mm_cvtph_ps(raw);
  return _mm_castsi128_ps(_mm_slli_epi32(_mm_cvtepu16_epi32(raw), 16));
}

inline __m128 Mins4(const uint16_t* m, int b, int nblk) {
  __m128i raw = nblk == 4 ? _mm_loadl_epi64(reinterpret_cast<const __m128i*>(m + b))
                          : _mm_maskz_loadu_epi16(static_cast<__mmask8>((1u << nblk) - 1), m + b);
  return _mm_cvtph_ps(raw);
}

// Software prefetch distance of the decode (1-token) tiles: the hardware prefetchers alone gave
// ~15 GB/s from DRAM on one core; 4-16 KB ahead gave ~24 GB/s (CPU time, 1536x576 matrices).
constexpr int kPrefetchBytes = 8192;

template <WFormat F, ScaleKind S, int R, int T>
void TileQ4(const QMatrix& w, const QActs& x, int r, int i0, float* y, int ldy) {
  const int nb = w.kp / 32, nc = (nb + 3) / 4, nb4 = x.nb4, spr = w.kp / w.group, rb = w.kp / 2;
  const __m512i nibble = _mm512_set1_epi8(0x0F);
  const __m512i spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  const uint8_t* rows[R];
  const uint16_t* srow[R];
  const uint16_t* mrow[R];
  for (int a = 0; a < R; ++a) {
    rows[a] = w.packed + static_cast<size_t>(r + a) * (w.kp / 2);
    srow[a] = w.scales + static_cast<size_t>(r + a) * spr;
    mrow[a] = F == WFormat::kQ4Min ? w.mins + static_cast<size_t>(r + a) * nb : nullptr;
  }
  const int8_t* xq[T];
  const float* xd[T];
  const int32_t* xb[T];
  const float* xs[T];
  for (int c = 0; c < T; ++c) {
    const size_t row = static_cast<size_t>(i0 + c) * nb4;
    xq[c] = x.q4.data() + row * 32;
    xd[c] = x.d4.data() + row * 4;
    xb[c] = x.b4.data() + row * 4;
    xs[c] = x.s4.data() + row * 4;
  }
  __m512 acc[R][T];
  for (int a = 0; a < R; ++a)
    for (int c = 0; c < T; ++c) acc[a][c] = _mm512_setzero_ps();
  for (int ch = 0; ch < nc; ++ch) {
    const int b = ch * 4, nblk = std::min(4, nb - b);
    __m512i lo[R], hi[R];
    __m512 dw[R], mw[R];
    for (int a = 0; a < R; ++a) {
      const uint8_t* p = rows[a] + b * 16;
      if (T == 1) {
        // Decode streams the matrix once, the R rows in lockstep: prefetch what is consumed
        // kPrefetchBytes later. Tiles smaller than that are read in memory order (prefetch
        // linearly ahead); longer rows: kPrefetchBytes / R further along this row or, past its
        // end, at that place in the next tile's row.
        const int ahead = b * 16 + kPrefetchBytes / R;
        const uint8_t* pf = R * rb <= kPrefetchBytes ? rows[a] + b * 16 + kPrefetchBytes
                          : ahead < rb ? rows[a] + ahead : rows[a] + (R - 1) * rb + ahead;
        _mm_prefetch(reinterpret_cast<const char*>(pf), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(srow[a] + b) + kPrefetchBytes / 8, _MM_HINT_T0);
      }
      __m512i v = nblk == 4 ? _mm512_loadu_si512(p)
                            : _mm512_maskz_loadu_epi8((1ULL << (16 * nblk)) - 1, p);
      lo[a] = _mm512_and_si512(v, nibble);
      hi[a] = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
      dw[a] = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(Scales4<S>(w, srow[a], b, nblk)));
      if (F == WFormat::kQ4Min)
        mw[a] = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(Mins4(mrow[a], b, nblk)));
    }
    for (int c = 0; c < T; ++c) {
      const __m512i xl = _mm512_loadu_si512(xq[c] + b * 32), xh = _mm512_loadu_si512(xq[c] + b * 32 + 64);
      const __m512 dx = _mm512_loadu_ps(xd[c] + b * 4);
      const __m512i init = F == WFormat::kQ4 ? _mm512_loadu_si512(xb[c] + b * 4) : _mm512_setzero_si512();
      __m512 sx;
      if (F == WFormat::kQ4Min) sx = _mm512_loadu_ps(xs[c] + b * 4);
      for (int a = 0; a < R; ++a) {
        __m512i dot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(init, lo[a], xl), hi[a], xh);
        acc[a][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dw[a], dx), acc[a][c]);
        if (F == WFormat::kQ4Min) acc[a][c] = _mm512_fmadd_ps(mw[a], sx, acc[a][c]);
      }
    }
  }
  for (int a = 0; a < R; ++a)
    for (int c = 0; c < T; ++c)
      y[static_cast<size_t>(i0 + c) * ldy + r + a] = _mm512_reduce_add_ps(acc[a][c]);
}

// ---- kQ8: four 32-blocks (two 512-bit loads) per step, against QActs::q in element order;
// each block spans 8 int32 lanes, whose start value -16 sum(q) folds in m = -128 d. ----
template <int R, int T>
void TileQ8(const QMatrix& w, const QActs& x, int r, int i0, float* y, int ldy) {
  const int nb = w.kp / 32, nc = (nb + 3) / 4, spr = w.kp / w.group, rb = w.kp;
  const __m512i lo2 = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
  const __m512i hi2 = _mm512_setr_epi32(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
  const uint8_t* rows[R];
  const uint16_t* srow[R];
  for (int a = 0; a < R; ++a) {
    rows[a] = w.packed + static_cast<size_t>(r + a) * rb;
    srow[a] = w.scales + static_cast<size_t>(r + a) * spr;
  }
  __m512 acc[R][T];
  for (int a = 0; a < R; ++a)
    for (int c = 0; c < T; ++c) acc[a][c] = _mm512_setzero_ps();
  for (int ch = 0; ch < nc; ++ch) {
    const int b = ch * 4, nblk = std::min(4, nb - b);
    const __mmask64 m0 = nblk >= 2 ? ~0ULL : 0xFFFFFFFFULL;
    const __mmask64 m1 = nblk == 4 ? ~0ULL : nblk == 3 ? 0xFFFFFFFFULL : 0ULL;
    const __mmask16 l0 = nblk >= 2 ? 0xFFFF : 0x00FF, l1 = nblk == 4 ? 0xFFFF : nblk == 3 ? 0x00FF : 0;
    __m512i u0[R], u1[R];
    __m512 d0[R], d1[R];
    for (int a = 0; a < R; ++a) {
      const uint8_t* p = rows[a] + b * 32;
      if (T == 1) {
        const int ahead = b * 32 + kPrefetchBytes / R;
        const uint8_t* pf = R * rb <= kPrefetchBytes ? p + kPrefetchBytes
                          : ahead < rb ? rows[a] + ahead : rows[a] + (R - 1) * rb + ahead;
        _mm_prefetch(reinterpret_cast<const char*>(pf), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(pf + 64), _MM_HINT_T0);
      }
      u0[a] = _mm512_maskz_loadu_epi8(m0, p);
      u1[a] = _mm512_maskz_loadu_epi8(m1, p + 64);
      const __m512 s4 = _mm512_castps128_ps512(Scales4<ScaleKind::kF16G32>(w, srow[a], b, nblk));
      d0[a] = _mm512_permutexvar_ps(lo2, s4);
      d1[a] = _mm512_permutexvar_ps(hi2, s4);
    }
    for (int c = 0; c < T; ++c) {
      const size_t o = static_cast<size_t>(i0 + c) * nb + b;
      const int8_t* q = x.qrow(i0 + c) + b * 32;
      const __m512i x0 = _mm512_maskz_loadu_epi8(m0, q), x1 = _mm512_maskz_loadu_epi8(m1, q + 64);
      const __m512i b0 = _mm512_slli_epi32(_mm512_maskz_loadu_epi32(l0, x.bexp.data() + o * 8), 4);
      const __m512i b1 = _mm512_slli_epi32(_mm512_maskz_loadu_epi32(l1, x.bexp.data() + (o + 2) * 8), 4);
      const __m512 dx0 = _mm512_maskz_loadu_ps(l0, x.dexp.data() + o * 8);
      const __m512 dx1 = _mm512_maskz_loadu_ps(l1, x.dexp.data() + (o + 2) * 8);
      for (int a = 0; a < R; ++a) {
        acc[a][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(b0, u0[a], x0)), _mm512_mul_ps(d0[a], dx0), acc[a][c]);
        acc[a][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(b1, u1[a], x1)), _mm512_mul_ps(d1[a], dx1), acc[a][c]);
      }
    }
  }
  for (int a = 0; a < R; ++a)
    for (int c = 0; c < T; ++c)
      y[static_cast<size_t>(i0 + c) * ldy + r + a] = _mm512_reduce_add_ps(acc[a][c]);
}

void QMatMulQ8(const QMatrix& w, const QActs& x, float* y, int ldy, int r0, int r1) {
  int r = r0;
  for (; r + 4 <= r1; r += 4) {
    int i = 0;
    for (; i + 3 <= x.t; i += 3) TileQ8<4, 3>(w, x, r, i, y, ldy);
    if (x.t - i == 2) TileQ8<4, 2>(w, x, r, i, y, ldy);
    else if (x.t - i == 1) TileQ8<4, 1>(w, x, r, i, y, ldy);
  }
  for (; r < r1; ++r)
    for (int i = 0; i < x.t; ++i) TileQ8<1, 1>(w, x, r, i, y, ldy);
}

// Rows [r0, r1): 4-row tiles over 3-token tiles (the registers hold 4 x 3 accumulators plus the
// 4 rows' unpacked weights), then token and row remainders.
template <WFormat F, ScaleKind S>
void QMatMulQ4(const QMatrix& w, const QActs& x, float* y, int ldy, int r0, int r1) {
  int r = r0;
  for (; r + 4 <= r1; r += 4) {
    int i = 0;
    for (; i + 3 <= x.t; i += 3) TileQ4<F, S, 4, 3>(w, x, r, i, y, ldy);
    if (x.t - i == 2) TileQ4<F, S, 4, 2>(w, x, r, i, y, ldy);
    else if (x.t - i == 1) TileQ4<F, S, 4, 1>(w, x, r, i, y, ldy);
  }
  for (; r < r1; ++r) {
    int i = 0;
    for (; i + 3 <= x.t; i += 3) TileQ4<F, S, 1, 3>(w, x, r, i, y, ldy);
    for (; i < x.t; ++i) TileQ4<F, S, 1, 1>(w, x, r, i, y, ldy);
  }
}

template <WFormat F>
void QMatMulQ4Any(const QMatrix& w, const QActs& x, float* y, int ldy, int r0, int r1) {
  if (w.group == 32 && !w.bf16_scales) return QMatMulQ4<F, ScaleKind::kF16G32>(w, x, y, ldy, r0, r1);
  if (w.group == 32) return QMatMulQ4<F, ScaleKind::kBF16G32>(w, x, y, ldy, r0, r1);
  return QMatMulQ4<F, ScaleKind::kGeneric>(w, x, y, ldy, r0, r1);
}

// ---- Whole 16-row tiles in the packed layout (kernels.h, QMatrix::tiles; the AVX2 kernels'
// PackTiles16 makes it): per 32-block, 8 registers hold 4 elements of each of the 16 rows, a
// lane per row, unpacked once and run against every token of the call with its 4 activation
// bytes broadcast (vpdpbusd), so the unpack, the scale conversion and the weight stream are paid
// once per block for the batch and only 8 vpdpbusd + 3 f32 ops per token. The int32 block dot
// is exact (sum u q plus the offset term -8 / -128 sum(q), kQ4 / kQ8), then acc = fma(dot,
// dw * dx, acc) (+ fma(m, dx sum(q), acc) for kQ4Min) per block in block order: the AMX
// kernels' TileVec op for op, so a token's result is the same in any batch or prompt chunk. ----

constexpr int kTileTokens = 8;  // accumulators per pass: 8 + 8 weight registers + scales fit in 32

// Block b's 16 scales (f16 or bf16 bits, the tile layout) in f32.
template <bool BF16>
inline __m512 TileScales(const uint16_t* s) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s));
  if (BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  return _mm512_cvtph_ps(h);
}

// One block's 8 weight registers, unsigned: register j holds elements 4j..4j+3 of every row
// (kQ4: j < 4 the low nibbles of group j, j >= 4 the high nibbles, elements 16 + 4(j - 4)..).
template <WFormat F>
inline void UnpackTileBlock(const uint8_t* p, __m512i u[8]) {
  if (F == WFormat::kQ8) {
    const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));  // int8 w -> u = w + 128
    for (int kk = 0; kk < 8; ++kk) u[kk] = _mm512_xor_si512(_mm512_loadu_si512(p + 64 * kk), flip);
    return;
  }
  const __m512i nibble = _mm512_set1_epi8(0x0F);
  for (int g = 0; g < 4; ++g) {
    const __m512i v = _mm512_loadu_si512(p + 64 * g);
    u[g] = _mm512_and_si512(v, nibble);
    u[4 + g] = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
  }
}

// acc + per-lane sums of u (u8) x 4 bytes of q (s8) broadcast, as one instruction with an
// embedded-broadcast memory operand: GCC 12 does not fold _mm512_set1_epi32 of a load into
// vpdpbusd, and the separate vpbroadcastd per 4 elements per token was a third of the batched
// kernel's instructions.
inline __m512i DotBcast(__m512i acc, __m512i u, const int8_t* q) {
  asm("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(u), "m"(*reinterpret_cast<const int32_t*>(q)));
  return acc;
}

// The exact block dot of 16 rows with one token's block q (32 bytes), starting from `init` (the
// offset term). Integer sums are exact in any order, so a short call (1-2 tokens, where one
// token's chain is the critical path) splits it into two chains.
template <bool kTwoChains>
inline __m512i TileBlockDot(const __m512i u[8], const int8_t* q, __m512i init) {
  __m512i d0 = init, d1 = _mm512_setzero_si512();
  for (int j = 0; j < 4; ++j) {
    d0 = DotBcast(d0, u[j], q + 4 * j);
    if (kTwoChains) d1 = DotBcast(d1, u[4 + j], q + 16 + 4 * j);
    else d0 = DotBcast(d0, u[4 + j], q + 16 + 4 * j);
  }
  return kTwoChains ? _mm512_add_epi32(d0, d1) : d0;
}

// The offset term of a block's dot: kQ4 -8 sum(q), kQ8 -128 sum(q), kQ4Min none (its m term is
// added in f32).
template <WFormat F>
inline __m512i DotInit(const int32_t* ob) {
  if (F == WFormat::kQ4Min) return _mm512_setzero_si512();
  const __m512i v = _mm512_set1_epi32(*ob);
  return F == WFormat::kQ8 ? _mm512_slli_epi32(v, 4) : v;
}

// Row tile `tile` x tokens i0 .. i0+T-1: y[(i0 + c) * ldy + 16 tile + 0..15]. The activations
// are QActs' block-major copies: block b's T tokens at fixed offsets from one pointer each.
template <WFormat F, bool BF16, int T>
void TileTokens(const QMatrix& w, const QActs& x, int tile, int i0, float* y, int ldy) {
  const int nb = w.kp / 32, t = x.t;
  constexpr int kTbb = F == WFormat::kQ8 ? 512 : 256;
  const size_t tb0 = static_cast<size_t>(tile) * nb;
  const uint8_t* p = w.tiles + tb0 * kTbb;
  const uint16_t* sc = w.tile_scales + tb0 * 16;
  const uint16_t* mn = F == WFormat::kQ4Min ? w.tile_mins + tb0 * 16 : nullptr;
  const int8_t* xq = x.qb.data() + static_cast<size_t>(i0) * 32;
  const float* xd = x.db.data() + i0;
  const float* xs = x.sb.data() + i0;
  const int32_t* xo = x.ob.data() + i0;
  __m512 acc[T];
  for (int c = 0; c < T; ++c) acc[c] = _mm512_setzero_ps();
  for (int b = 0; b < nb; ++b, p += kTbb, sc += 16, xq += 32 * t, xd += t, xs += t, xo += t) {
    // the tiles are one stream in memory order: prefetch what is read kPrefetchBytes later
    for (int l = 0; l < kTbb; l += 64) _mm_prefetch(reinterpret_cast<const char*>(p + l) + kPrefetchBytes, _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(sc) + kPrefetchBytes / 8, _MM_HINT_T0);
    __m512i u[8];
    UnpackTileBlock<F>(p, u);
    const __m512 dw = TileScales<BF16>(sc);
    __m512 mw = _mm512_setzero_ps();
    if (F == WFormat::kQ4Min) mw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(mn + 16 * b)));
    for (int c = 0; c < T; ++c) {
      const __m512i dot = TileBlockDot<(T <= 2)>(u, xq + 32 * c, DotInit<F>(xo + c));
      acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dw, _mm512_set1_ps(xd[c])), acc[c]);
      if (F == WFormat::kQ4Min) acc[c] = _mm512_fmadd_ps(mw, _mm512_set1_ps(xs[c]), acc[c]);
    }
  }
  for (int c = 0; c < T; ++c) _mm512_storeu_ps(y + static_cast<size_t>(i0 + c) * ldy + 16 * tile, acc[c]);
}

template <WFormat F, bool BF16>
void TileTokensN(int n, const QMatrix& w, const QActs& x, int tile, int i0, float* y, int ldy) {
  switch (n) {
    case 1: return TileTokens<F, BF16, 1>(w, x, tile, i0, y, ldy);
    case 2: return TileTokens<F, BF16, 2>(w, x, tile, i0, y, ldy);
    case 3: return TileTokens<F, BF16, 3>(w, x, tile, i0, y, ldy);
    case 4: return TileTokens<F, BF16, 4>(w, x, tile, i0, y, ldy);
    case 5: return TileTokens<F, BF16, 5>(w, x, tile, i0, y, ldy);
    case 6: return TileTokens<F, BF16, 6>(w, x, tile, i0, y, ldy);
    case 7: return TileTokens<F, BF16, 7>(w, x, tile, i0, y, ldy);
    case 8: return TileTokens<F, BF16, 8>(w, x, tile, i0, y, ldy);
  }
}

// Tiles [a, e) x all tokens, kTileTokens per pass (a tile's later passes read it from L1).
template <WFormat F, bool BF16>
void QMatMulTiles(const QMatrix& w, const QActs& x, float* y, int ldy, int a, int e) {
  for (int tile = a; tile < e; ++tile)
    for (int i = 0; i < x.t; i += kTileTokens)
      TileTokensN<F, BF16>(std::min(kTileTokens, x.t - i), w, x, tile, i, y, ldy);
}

template <WFormat F>
void QMatMulTilesAny(const QMatrix& w, const QActs& x, float* y, int ldy, int a, int e) {
  if (w.bf16_scales) return QMatMulTiles<F, true>(w, x, y, ldy, a, e);
  QMatMulTiles<F, false>(w, x, y, ldy, a, e);
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

// Rows [r0, r1) on the rows as stored (4-row tiles; the rows outside whole 16-row tiles).
void QMatMulRows(const QMatrix& w, const QActs& x, float* y, int ldy, int r0, int r1) {
  switch (w.format) {
    case WFormat::kQ4: return QMatMulQ4Any<WFormat::kQ4>(w, x, y, ldy, r0, r1);
    case WFormat::kQ4Min: return QMatMulQ4Any<WFormat::kQ4Min>(w, x, y, ldy, r0, r1);
    case WFormat::kQ8:
      if (w.group == 32 && !w.bf16_scales) return QMatMulQ8(w, x, y, ldy, r0, r1);
      return QMatMulFormat<WFormat::kQ8>(w, x, y, ldy, r0, r1);
  }
}

// Rows [r0, r1): the whole 16-row tiles on the packed tiles, other rows as stored. Which path a
// row takes depends on the row range only, never on the token count.
void QMatMul512(const QMatrix& w, const QActs& x, float* y, int ldy, int r0, int r1) {
  const int a = (r0 + 15) / 16, e = std::min(r1, w.n / 16 * 16) / 16;
  if (w.tiles == nullptr || a >= e) return QMatMulRows(w, x, y, ldy, r0, r1);
  if (r0 < 16 * a) QMatMulRows(w, x, y, ldy, r0, 16 * a);
  switch (w.format) {
    case WFormat::kQ4: QMatMulTilesAny<WFormat::kQ4>(w, x, y, ldy, a, e); break;
    case WFormat::kQ4Min: QMatMulTilesAny<WFormat::kQ4Min>(w, x, y, ldy, a, e); break;
    case WFormat::kQ8: QMatMulTilesAny<WFormat::kQ8>(w, x, y, ldy, a, e); break;
  }
  if (16 * e < r1) QMatMulRows(w, x, y, ldy, 16 * e, r1);
}

// QuantizeRowScalar's arithmetic 16 lanes at a time: bit-identical (see kernels_avx2.cc).
void QuantizeRow512(const float* x, int nb, int8_t* q, float* d, int32_t* sumq) {
  const __m512i lim = _mm512_set1_epi32(127), nlim = _mm512_set1_epi32(-127);
  for (int b = 0; b < nb; ++b) {
    const __m512 a = _mm512_loadu_ps(x + b * 32), c = _mm512_loadu_ps(x + b * 32 + 16);
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(c)));
    const float id = amax > 0.f ? 127.f / amax : 0.f;
    const __m512 vid = _mm512_set1_ps(id);
    __m512i qa = _mm512_cvtps_epi32(_mm512_mul_ps(a, vid)), qc = _mm512_cvtps_epi32(_mm512_mul_ps(c, vid));
    qa = _mm512_min_epi32(lim, _mm512_max_epi32(nlim, qa));
    qc = _mm512_min_epi32(lim, _mm512_max_epi32(nlim, qc));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + b * 32), _mm512_cvtsepi32_epi8(qa));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + b * 32 + 16), _mm512_cvtsepi32_epi8(qc));
    d[b] = amax / 127.f;
    sumq[b] = _mm512_reduce_add_epi32(_mm512_add_epi32(qa, qc));
  }
}

// exp(x) for x <= 0 (softmax after the max is subtracted): x = n ln2 + r, a degree-6 polynomial
// of r (Cephes expf coefficients), times 2^n by vscalefps. Relative error ~2e-7.
inline __m512 Exp512(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

// g = act(g) * u, 16 lanes at a time: tanh(z) = 1 - 2 / (exp(2z) + 1), silu(x) = x / (1 + exp(-x)),
// with Exp512 (relative error ~2e-7; overflow to inf gives the right limits).
void GatedAct512(float* g, const float* u, int n, bool gelu) {
  const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f), two = _mm512_set1_ps(2.0f);
  const __m512 c = _mm512_set1_ps(0.7978845608028654f), k = _mm512_set1_ps(0.044715f);
  for (int i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512 x = _mm512_maskz_loadu_ps(m, g + i), uv = _mm512_maskz_loadu_ps(m, u + i);
    __m512 a;
    if (gelu) {
      const __m512 z = _mm512_mul_ps(c, _mm512_fmadd_ps(_mm512_mul_ps(k, x), _mm512_mul_ps(x, x), x));
      const __m512 th = _mm512_sub_ps(one, _mm512_div_ps(two, _mm512_add_ps(Exp512(_mm512_add_ps(z, z)), one)));
      a = _mm512_mul_ps(_mm512_mul_ps(half, x), _mm512_add_ps(one, th));
    } else {
      a = _mm512_div_ps(x, _mm512_add_ps(one, Exp512(_mm512_sub_ps(_mm512_setzero_ps(), x))));
    }
    _mm512_mask_storeu_ps(g + i, m, _mm512_mul_ps(a, uv));
  }
}

// The horizontal sums of four vectors: [sum(a), sum(b), sum(c), sum(d)].
inline __m128 Reduce4(__m512 a, __m512 b, __m512 c, __m512 d) {
  const __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
  const __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
  const __m512 abcd = _mm512_add_ps(_mm512_shuffle_ps(ab, cd, _MM_SHUFFLE(1, 0, 1, 0)),
                                    _mm512_shuffle_ps(ab, cd, _MM_SHUFFLE(3, 2, 3, 2)));
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(abcd),
                                 _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(abcd), 1)));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

// Head sizes that are multiples of 16: the scores with one 512-bit f16->f32 row per 16
// features, a vector softmax, then o accumulated in registers (4 x 16 features per pass over
// the values). Other head sizes take the AVX2 path.
void Attend512(const float* q, int nh, int dh, const uint16_t* k, const uint16_t* v, size_t stride,
               int len, float scale, float* scores, float* o) {
  if (dh % 16 != 0) return Avx2Kernels()->attend_f16(q, nh, dh, k, v, stride, len, scale, scores, o);
  const int nv = dh / 16;
  for (int h = 0; h < nh; ++h) {
    float* s = scores + static_cast<size_t>(h) * len;
    const float* qh = q + h * dh;
    auto dot = [&](int j) {
      const uint16_t* kj = k + j * stride;
      __m512 acc = _mm512_mul_ps(_mm512_loadu_ps(qh), _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(kj))));
      for (int c = 1; c < nv; ++c)
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(qh + 16 * c),
                              _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(kj + 16 * c))), acc);
      return acc;
    };
    float mx = -INFINITY;
    int j = 0;
    for (; j + 4 <= len; j += 4) {  // four positions' dots reduced together
      const __m128 d4 = _mm_mul_ps(Reduce4(dot(j), dot(j + 1), dot(j + 2), dot(j + 3)), _mm_set1_ps(scale));
      _mm_storeu_ps(s + j, d4);
      __m128 m = _mm_max_ps(d4, _mm_movehl_ps(d4, d4));
      mx = std::max(mx, _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1))));
    }
    for (; j < len; ++j) {
      s[j] = _mm512_reduce_add_ps(dot(j)) * scale;
      mx = std::max(mx, s[j]);
    }
    const __m512 vmx = _mm512_set1_ps(mx);
    __m512 vsum = _mm512_setzero_ps();
    for (int j = 0; j < len; j += 16) {
      const __mmask16 m = len - j >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (len - j)) - 1);
      __m512 e = _mm512_maskz_mov_ps(m, Exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, s + j), vmx)));
      _mm512_mask_storeu_ps(s + j, m, e);
      vsum = _mm512_add_ps(vsum, e);
    }
    const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(vsum));
    for (int j = 0; j < len; j += 16) {
      const __mmask16 m = len - j >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (len - j)) - 1);
      _mm512_mask_storeu_ps(s + j, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, s + j), inv));
    }
    float* oh = o + h * dh;
    for (int c0 = 0; c0 < nv; c0 += 4) {
      const int nc = std::min(4, nv - c0);
      __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
      for (int j = 0; j < len; ++j) {
        const __m512 p = _mm512_set1_ps(s[j]);
        const uint16_t* vj = v + j * stride + 16 * c0;
        for (int c = 0; c < 4; ++c)
          if (c < nc)
            a[c] = _mm512_fmadd_ps(p, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(vj + 16 * c))), a[c]);
      }
      for (int c = 0; c < nc; ++c) _mm512_storeu_ps(oh + 16 * (c0 + c), a[c]);
    }
  }
}

}  // namespace

const Kernels* Avx512Kernels() {
  static const Kernels k = [] {
    Kernels k = *Avx2Kernels();
    k.name = "avx512";
    k.qmatmul = QMatMul512;
    k.row_tile = 16;  // thread parts keep the 16-row tiles whole
    k.pack = Avx2Kernels()->pack;  // the same tile layout (PackTiles16)
    k.quantize_row = QuantizeRow512;
    k.attend_f16 = Attend512;
    k.gated_act = GatedAct512;
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
