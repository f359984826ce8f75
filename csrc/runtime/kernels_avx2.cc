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

// ---- int8 activations on whole 16-row tiles, weights repacked once at load (PackTiles16) ----
// The layout is QMatrix::tiles' (kernels.h; the AMX kernels' too): per (16-row tile, 32-block)
// kQ4/kQ4Min 256 bytes, byte 64 g + 4 n + j holding elements 4g+j (low nibble) and 16+4g+j (high
// nibble) of the tile's row n; kQ8 512 bytes, byte 64 kk + 4 n + j = element 4kk+j of row n as
// int8 (u - 128). So one 256-bit load holds 4 consecutive elements of each of 8 rows (an
// "octet": rows 0-7 at bytes 0-31 of each 64, rows 8-15 at 32-63), every 32-bit lane one row,
// and the activations are 4 bytes broadcast to all lanes: the lane sums of maddubs + madd are
// the 8 rows' block dots, with no horizontal reduction and the block scales of the 8 rows in
// one vector. kQ4: the nibbles u (0..15) against q go through maddubs into int16 (8 products of
// 2 pairs per block: |sum| <= 8 * 2 * 15 * 127 = 30480, no saturation), one madd with ones to
// int32, minus 8 sum(q) (m = -8 d); kQ4Min: + m dx sum(q) in f32; kQ8: maddubs(|w|, sign(q, w))
// (|pair| <= 2 * 128 * 127) then madd per 4 elements. Per block and lane: acc = fma(dot, dw * dx,
// acc) in block order, so a token's result is the same whatever the tile's token count (a
// batched decode equals each sequence alone, bit for bit).

// The whole 16-row tiles of w in the tile layout (rows past the last whole tile stay unpacked).
void PackTiles16(QMatrix* w, PackedTiles* out) {
  const int tiles = w->n / 16, nb = w->kp / 32, spr = w->kp / w->group;
  w->tiles = nullptr;
  w->tile_scales = w->tile_mins = nullptr;
  if (tiles == 0) return;
  const bool q8 = w->format == WFormat::kQ8, mins = w->format == WFormat::kQ4Min;
  const size_t rb = w->RowBytes(), tbb = q8 ? 512 : 256;
  out->tiles.assign(static_cast<size_t>(tiles) * nb * tbb, 0);
  out->scales.assign(static_cast<size_t>(tiles) * nb * 16, 0);
  out->mins.assign(mins ? static_cast<size_t>(tiles) * nb * 16 : 0, 0);
  for (int t = 0; t < tiles; ++t)
    for (int b = 0; b < nb; ++b) {
      const size_t tb = static_cast<size_t>(t) * nb + b;
      uint8_t* dst = out->tiles.data() + tb * tbb;
      for (int n = 0; n < 16; ++n) {
        const int r = t * 16 + n;
        const uint8_t* row = w->packed + static_cast<size_t>(r) * rb;
        for (int e = 0; e < (q8 ? 32 : 16); ++e)
          dst[64 * (e / 4) + 4 * n + e % 4] = q8 ? static_cast<uint8_t>(row[b * 32 + e] ^ 0x80) : row[b * 16 + e];
        out->scales[tb * 16 + n] = w->scales[static_cast<size_t>(r) * spr + (b * 32) / w->group];
        if (mins) out->mins[tb * 16 + n] = w->mins[static_cast<size_t>(r) * nb + b];
      }
    }
  w->tiles = out->tiles.data();
  w->tile_scales = out->scales.data();
  w->tile_mins = mins ? out->mins.data() : nullptr;
}

// Bytes ahead of the read position the 1-token tiles prefetch (the packed matrix is one
// sequential stream; its scales another, 1/8 as fast). Streaming 260 MB of 2048x2048 tiles on
// one core (CPU time, Zen 3 at load ~10): ~6 GB/s with the hardware prefetchers alone, ~8 at
// 1-2 KB ahead, ~9 at 4-8 KB.
constexpr int kTilePrefetch = 4096;

inline __m256 Scales8(const uint16_t* s, bool bf16) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s));
  if (bf16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  return _mm256_cvtph_ps(h);
}

// An opaque copy of v: keeps GCC from reassociating a chain of integer adds into a tree, which
// makes every product live at once and spills them (the chains here are short and in order).
inline __m256i Chain(__m256i v) {
  asm("" : "+x"(v));
  return v;
}

// One block's finish for one octet and token: acc += f32(dot) * (dw * dx) (+ m dx sum(q)).
template <WFormat F>
inline __m256 Finish(__m256 acc, __m256i dot, __m256 dw, __m256 mw, float dx, float sx, int32_t sumq) {
  if (F == WFormat::kQ4) dot = _mm256_sub_epi32(dot, _mm256_set1_epi32(8 * sumq));
  acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(dw, _mm256_set1_ps(dx)), acc);
  if (F == WFormat::kQ4Min) acc = _mm256_fmadd_ps(mw, _mm256_set1_ps(sx), acc);
  return acc;
}

template <WFormat F>
inline const uint8_t* TileBase(const QMatrix& w, int tile) {
  return w.tiles + static_cast<size_t>(tile) * (w.kp / 32) * (F == WFormat::kQ8 ? 512 : 256);
}

// Both octets of row tile `tile` x token i (decode): the tile's bytes in memory order, prefetched
// kTilePrefetch ahead; y[i * ldy + 16 tile + 0..15].
template <WFormat F, bool BF16>
void TileDecode(const QMatrix& w, const QActs& x, int tile, int i, float* y, int ldy) {
  const int nb = w.kp / 32;
  constexpr int kTbb = F == WFormat::kQ8 ? 512 : 256;
  const uint8_t* p = TileBase<F>(w, tile);
  const uint16_t* sc = w.tile_scales + static_cast<size_t>(tile) * nb * 16;
  const uint16_t* mn = F == WFormat::kQ4Min ? w.tile_mins + static_cast<size_t>(tile) * nb * 16 : nullptr;
  const __m256i nibble = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  const int32_t* xq = reinterpret_cast<const int32_t*>(x.qrow(i));
  const size_t o = static_cast<size_t>(i) * nb;
  const float* xd = x.d.data() + o;
  const float* xs = x.s.data() + o;
  const int32_t* xsum = x.sumq.data() + o;
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  for (int b = 0; b < nb; ++b, p += kTbb, sc += 16, xq += 8) {
#pragma GCC unroll 8
    for (int l = 0; l < kTbb; l += 64) _mm_prefetch(reinterpret_cast<const char*>(p + l) + kTilePrefetch, _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(sc) + kTilePrefetch / 8, _MM_HINT_T0);
    __m256i s0, s1;
    if (F == WFormat::kQ8) {
#pragma GCC unroll 8
      for (int kk = 0; kk < 8; ++kk) {
        const __m256i xb = _mm256_set1_epi32(xq[kk]);
        const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 64 * kk));
        const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 64 * kk + 32));
        const __m256i d0 = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(w0), _mm256_sign_epi8(xb, w0)), ones);
        const __m256i d1 = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(w1), _mm256_sign_epi8(xb, w1)), ones);
        s0 = kk == 0 ? d0 : Chain(_mm256_add_epi32(s0, d0));
        s1 = kk == 0 ? d1 : Chain(_mm256_add_epi32(s1, d1));
      }
    } else {
#pragma GCC unroll 4
      for (int g = 0; g < 4; ++g) {
        const __m256i xl = _mm256_set1_epi32(xq[g]), xh = _mm256_set1_epi32(xq[4 + g]);
        const __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 64 * g));
        const __m256i v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 64 * g + 32));
        const __m256i d0 = _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_and_si256(v0, nibble), xl),
                                            _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v0, 4), nibble), xh));
        const __m256i d1 = _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_and_si256(v1, nibble), xl),
                                            _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v1, 4), nibble), xh));
        s0 = g == 0 ? d0 : Chain(_mm256_add_epi16(s0, d0));
        s1 = g == 0 ? d1 : Chain(_mm256_add_epi16(s1, d1));
      }
      s0 = _mm256_madd_epi16(s0, ones);
      s1 = _mm256_madd_epi16(s1, ones);
    }
    __m256 m0 = _mm256_setzero_ps(), m1 = m0;
    if (F == WFormat::kQ4Min) {
      m0 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(mn)));
      m1 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(mn + 8)));
      mn += 16;
    }
    acc0 = Finish<F>(acc0, s0, Scales8(sc, BF16), m0, xd[b], xs[b], xsum[b]);
    acc1 = Finish<F>(acc1, s1, Scales8(sc + 8, BF16), m1, xd[b], xs[b], xsum[b]);
  }
  _mm256_storeu_ps(y + static_cast<size_t>(i) * ldy + 16 * tile, acc0);
  _mm256_storeu_ps(y + static_cast<size_t>(i) * ldy + 16 * tile + 8, acc1);
}

// Octet h of row tile `tile` x tokens i0 .. i0+T-1 (prefill, batches): per block the octet's
// weights are unpacked once into registers (kQ4: 8 of nibbles; kQ8: 8 of |w|, the signs read
// from L1) and used for each token in turn; y[(i0 + c) * ldy + 16 tile + 8 h + 0..7].
template <WFormat F, bool BF16, int T>
void TilePrefill(const QMatrix& w, const QActs& x, int tile, int h, int i0, float* y, int ldy) {
  const int nb = w.kp / 32;
  constexpr int kTbb = F == WFormat::kQ8 ? 512 : 256;
  const uint8_t* p = TileBase<F>(w, tile) + 32 * h;
  const uint16_t* sc = w.tile_scales + static_cast<size_t>(tile) * nb * 16 + 8 * h;
  const uint16_t* mn = F == WFormat::kQ4Min ? w.tile_mins + static_cast<size_t>(tile) * nb * 16 + 8 * h : nullptr;
  const __m256i nibble = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  const int kp4 = x.kp / 4;
  const int32_t* xq = reinterpret_cast<const int32_t*>(x.qrow(i0));
  const size_t o = static_cast<size_t>(i0) * nb;
  const float* xd = x.d.data() + o;
  const float* xs = x.s.data() + o;
  const int32_t* xsum = x.sumq.data() + o;
  __m256 acc[T];
#pragma GCC unroll 8
  for (int c = 0; c < T; ++c) acc[c] = _mm256_setzero_ps();
  for (int b = 0; b < nb; ++b, p += kTbb, sc += 16) {
    __m256i u[8];
#pragma GCC unroll 8
    for (int g = 0; g < 4; ++g) {
      if (F == WFormat::kQ8) {
        u[g] = _mm256_abs_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 64 * g)));
        u[4 + g] = _mm256_abs_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 256 + 64 * g)));
      } else {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 64 * g));
        u[g] = _mm256_and_si256(v, nibble);
        u[4 + g] = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
      }
    }
    const __m256 dw = Scales8(sc, BF16);
    __m256 mw = _mm256_setzero_ps();
    if (F == WFormat::kQ4Min) {
      mw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(mn)));
      mn += 16;
    }
#pragma GCC unroll 8
    for (int c = 0; c < T; ++c) {
      const int32_t* q = xq + static_cast<size_t>(c) * kp4 + 8 * b;
      __m256i s;
      if (F == WFormat::kQ8) {
#pragma GCC unroll 8
        for (int kk = 0; kk < 8; ++kk) {
          const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 64 * kk));
          const __m256i d = _mm256_madd_epi16(_mm256_maddubs_epi16(u[kk], _mm256_sign_epi8(_mm256_set1_epi32(q[kk]), wv)), ones);
          s = kk == 0 ? d : Chain(_mm256_add_epi32(s, d));
        }
      } else {
        // elements 4g..4g+3 are u[g]'s (low nibbles), 16+4g.. u[4+g]'s (high nibbles)
#pragma GCC unroll 8
        for (int g = 0; g < 8; ++g) {
          const __m256i d = _mm256_maddubs_epi16(u[g], _mm256_set1_epi32(q[g]));
          s = g == 0 ? d : Chain(_mm256_add_epi16(s, d));
        }
        s = _mm256_madd_epi16(s, ones);
      }
      const size_t ob = static_cast<size_t>(c) * nb + b;
      acc[c] = Finish<F>(acc[c], s, dw, mw, xd[ob], xs[ob], xsum[ob]);
    }
  }
#pragma GCC unroll 8
  for (int c = 0; c < T; ++c) _mm256_storeu_ps(y + static_cast<size_t>(i0 + c) * ldy + 16 * tile + 8 * h, acc[c]);
}

// Tiles [a, e) (16-row units) x all tokens. Up to 3 tokens (decode, small batches): both octets
// per pass, one token at a time, so the tile streams from memory in order; more (prefill): one
// octet x 4 tokens per pass, the tile staying in L1 across the token groups.
template <WFormat F, bool BF16>
void QMatMulTiles(const QMatrix& w, const QActs& x, float* y, int ldy, int a, int e) {
  for (int tile = a; tile < e; ++tile) {
    if (x.t < 4) {
      for (int i = 0; i < x.t; ++i) TileDecode<F, BF16>(w, x, tile, i, y, ldy);
      continue;
    }
    for (int h = 0; h < 2; ++h) {
      int i = 0;
      for (; i + 4 <= x.t; i += 4) TilePrefill<F, BF16, 4>(w, x, tile, h, i, y, ldy);
      switch (x.t - i) {
        case 3: TilePrefill<F, BF16, 3>(w, x, tile, h, i, y, ldy); break;
        case 2: TilePrefill<F, BF16, 2>(w, x, tile, h, i, y, ldy); break;
        case 1: TilePrefill<F, BF16, 1>(w, x, tile, h, i, y, ldy); break;
      }
    }
  }
}

// Rows [r0, r1): the whole 16-row tiles on the packed path, other rows on the 4-row tiles.
void QMatMulAvx2(const QMatrix& w, const QActs& x, float* y, int ldy, int r0, int r1) {
  const QMatMulFn rest = QMatMul256<4, 2>;
  const int a = (r0 + 15) / 16, e = std::min(r1, w.n / 16 * 16) / 16;
  if (w.tiles == nullptr || a >= e) return rest(w, x, y, ldy, r0, r1);
  if (r0 < 16 * a) rest(w, x, y, ldy, r0, 16 * a);
  const bool bf = w.bf16_scales;
  switch (w.format) {
    case WFormat::kQ4:
      (bf ? QMatMulTiles<WFormat::kQ4, true> : QMatMulTiles<WFormat::kQ4, false>)(w, x, y, ldy, a, e);
      break;
    case WFormat::kQ4Min:
      (bf ? QMatMulTiles<WFormat::kQ4Min, true> : QMatMulTiles<WFormat::kQ4Min, false>)(w, x, y, ldy, a, e);
      break;
    case WFormat::kQ8:
      (bf ? QMatMulTiles<WFormat::kQ8, true> : QMatMulTiles<WFormat::kQ8, false>)(w, x, y, ldy, a, e);
      break;
  }
  if (16 * e < r1) rest(w, x, y, ldy, 16 * e, r1);
}

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

// exp(x) for the softmax (x <= 0) and the activations: x = n ln2 + r, a degree-6 polynomial of r
// (Cephes expf coefficients), times 2^n built in the exponent bits; x clamped to [-87, 88] so 2^n
// stays a normal float. Relative error ~2e-7.
inline __m256 Exp256(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

// g = act(g) * u, 8 lanes at a time (tanh(z) = 1 - 2 / (exp(2z) + 1), silu(x) = x / (1 + exp(-x))),
// the ragged tail by the scalar reference.
void GatedActAvx2(float* g, const float* u, int n, bool gelu) {
  const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f), two = _mm256_set1_ps(2.0f);
  const __m256 c = _mm256_set1_ps(0.7978845608028654f), k = _mm256_set1_ps(0.044715f);
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 x = _mm256_loadu_ps(g + i), uv = _mm256_loadu_ps(u + i);
    __m256 a;
    if (gelu) {
      const __m256 z = _mm256_mul_ps(c, _mm256_fmadd_ps(_mm256_mul_ps(k, x), _mm256_mul_ps(x, x), x));
      const __m256 th = _mm256_sub_ps(one, _mm256_div_ps(two, _mm256_add_ps(Exp256(_mm256_add_ps(z, z)), one)));
      a = _mm256_mul_ps(_mm256_mul_ps(half, x), _mm256_add_ps(one, th));
    } else {
      a = _mm256_div_ps(x, _mm256_add_ps(one, Exp256(_mm256_sub_ps(_mm256_setzero_ps(), x))));
    }
    _mm256_storeu_ps(g + i, _mm256_mul_ps(a, uv));
  }
  if (i < n) GatedActScalar(g + i, u + i, n - i, gelu);
}

// The 8 horizontal sums of v[0..7], in order.
inline __m256 Reduce8(const __m256* v) {
  const __m256 a = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
  const __m256 b = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
}

// Head sizes that are multiples of 8: scores 8 positions at a time (one f16 key row per
// accumulator, the 8 sums reduced together), a vector softmax, then o accumulated in registers,
// 64 features (8 vectors) per pass over the values. Other head sizes: the scalar loops.
void AttendAvx2(const float* q, int nh, int dh, const uint16_t* k, const uint16_t* v, size_t stride,
                int len, float scale, float* scores, float* o) {
  if (dh % 8 != 0) return AttendF16Scalar(q, nh, dh, k, v, stride, len, scale, scores, o);
  auto f16 = [](const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); };
  const __m256 vscale = _mm256_set1_ps(scale);
  for (int h = 0; h < nh; ++h) {
    float* s = scores + static_cast<size_t>(h) * len;
    const float* qh = q + h * dh;
    __m256 vmax = _mm256_set1_ps(-INFINITY);
    int j = 0;
    for (; j + 8 <= len; j += 8) {
      __m256 acc[8];
      const uint16_t* kj = k + j * stride;
      if (j + 16 <= len)  // the next 8 keys (one line per 32 features)
        for (int c = 8; c < 16; ++c)
          for (int x = 0; x < dh; x += 32) _mm_prefetch(reinterpret_cast<const char*>(kj + c * stride + x), _MM_HINT_T0);
      for (int c = 0; c < 8; ++c) acc[c] = _mm256_mul_ps(_mm256_loadu_ps(qh), f16(kj + c * stride));
      for (int x = 8; x < dh; x += 8) {
        const __m256 qv = _mm256_loadu_ps(qh + x);
        for (int c = 0; c < 8; ++c) acc[c] = _mm256_fmadd_ps(qv, f16(kj + c * stride + x), acc[c]);
      }
      const __m256 d = _mm256_mul_ps(Reduce8(acc), vscale);
      _mm256_storeu_ps(s + j, d);
      vmax = _mm256_max_ps(vmax, d);
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    float mx = _mm_cvtss_f32(_mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1)));
    for (; j < len; ++j) {
      s[j] = DotF16Avx2(qh, k + j * stride, dh) * scale;
      mx = std::max(mx, s[j]);
    }
    const __m256 vmx = _mm256_set1_ps(mx);
    __m256 vsum = _mm256_setzero_ps();
    j = 0;
    for (; j + 8 <= len; j += 8) {
      const __m256 e = Exp256(_mm256_sub_ps(_mm256_loadu_ps(s + j), vmx));
      _mm256_storeu_ps(s + j, e);
      vsum = _mm256_add_ps(vsum, e);
    }
    float sum = HSum256(vsum);
    for (; j < len; ++j) {
      s[j] = std::exp(s[j] - mx);
      sum += s[j];
    }
    const float inv = 1.0f / sum;
    const __m256 vinv = _mm256_set1_ps(inv);
    j = 0;
    for (; j + 8 <= len; j += 8) _mm256_storeu_ps(s + j, _mm256_mul_ps(_mm256_loadu_ps(s + j), vinv));
    for (; j < len; ++j) s[j] *= inv;
    float* oh = o + h * dh;
    for (int c0 = 0; c0 < dh; c0 += 64) {
      const int nc = std::min(8, (dh - c0) / 8);
      __m256 a[8];
      for (int c = 0; c < 8; ++c) a[c] = _mm256_setzero_ps();
      for (int jj = 0; jj < len; ++jj) {
        const __m256 pj = _mm256_set1_ps(s[jj]);
        const uint16_t* vj = v + jj * stride + c0;
        if (jj + 4 < len)
          for (int x = 0; x < 8 * nc; x += 32) _mm_prefetch(reinterpret_cast<const char*>(vj + 4 * stride + x), _MM_HINT_T0);
        if (nc == 8) {
          for (int c = 0; c < 8; ++c) a[c] = _mm256_fmadd_ps(pj, f16(vj + 8 * c), a[c]);
        } else {
          for (int c = 0; c < nc; ++c) a[c] = _mm256_fmadd_ps(pj, f16(vj + 8 * c), a[c]);
        }
      }
      for (int c = 0; c < nc; ++c) _mm256_storeu_ps(oh + c0 + 8 * c, a[c]);
    }
  }
}

const Kernels kAvx2 = {"avx2", MatVecAvx2, MatMulAvx2, QMatMulAvx2,
                       DotF16Avx2, AxpyF16Avx2, ToF16Avx2, 16, QuantizeRowAvx2, AttendAvx2,
                       GatedActAvx2, PackTiles16};

}  // namespace

const Kernels* Avx2Kernels() { return &kAvx2; }

}  // namespace gemini::runtime

#else
namespace gemini::runtime {
const Kernels* Avx2Kernels() { return nullptr; }
}  // namespace gemini::runtime
#endif
