// AMX-INT8 kernels (Sapphire Rapids and later: tdpbssd / tdpbsud on 16 x 64-byte tile registers)
// for the int8-activation matmuls of several tokens at once (prefill chunks, batched decode).
//
// One tile product covers 16 tokens x 16 weight rows x one 32-block: A = the tokens' int8
// activations (16 rows of 32 bytes, loaded straight from QActs::q with the row stride kp),
// B = the 16 weight rows' block in the VNNI layout (8 rows of 64 bytes; row kk holds elements
// 4kk..4kk+3 of each weight row). At load time each matrix's whole 16-row tiles are copied once
// into that order (PackAmx, QMatrix::tiles: nibbles stay nibbles, so a batched step streams the
// same bytes as decode); a call unpacks a tile's nibbles to bytes in L1 (kQ4: u - 8, signed,
// tdpbssd, so the block dot needs no offset term; kQ4Min: u, tdpbsud, plus m * dx * sum(q)),
// 4 blocks ahead of their products when there is one token tile (batched decode) or the whole
// row tile first when several token tiles reuse it (prefill). The int32 block dots go to memory
// (tilestored) and are accumulated in f32 as acc[token] += dot * (dx[token] * dw[rows]), the 16
// weight rows in one 512-bit vector. Fewer than 4 tokens (decode) take the same packed tiles
// through 512-bit vpdpbusd with the same arithmetic (TileVec), so results never depend on the
// batch; rows outside whole 16-row tiles take the AVX-512 kernels (the same for every batch).
#include "csrc/runtime/kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace gemini::runtime {
namespace {

constexpr int kMinTokens = 4;  // fewer: TileVec per token (a tile product would be mostly padding)

// Tile registers: 0-3 results (16 x 16 int32), 4-5 activations (16 x 32 bytes), 6-7 weights.
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

void ConfigureTiles() {
  TileConfig c;
  for (int i = 0; i < 4; ++i) { c.rows[i] = 16; c.colsb[i] = 64; }
  for (int i = 4; i < 6; ++i) { c.rows[i] = 16; c.colsb[i] = 32; }
  for (int i = 6; i < 8; ++i) { c.rows[i] = 8; c.colsb[i] = 64; }
  _tile_loadconfig(&c);
}

// Per-thread scratch (grow-only, so a steady state allocates nothing).
struct Scratch {
  std::vector<int8_t> wt;      // [nb, 8, 64] one row tile's weights unpacked (the B tiles)
  std::vector<float> dw, mw;   // [nb, 16] its scales and mins in f32
  std::vector<int8_t> xpad;    // [16, kp] a last partial token tile, zero-padded
  alignas(64) int32_t c[4][256];
};

Scratch& ThreadScratch() {
  thread_local Scratch s;
  return s;
}

template <class T>
void Grow(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

size_t TileBlockBytes(const QMatrix& w) { return w.format == WFormat::kQ8 ? 512 : 256; }

// The whole 16-row tiles in the tile layout (kernels.h, QMatrix::tiles), once per matrix.
void PackAmx(QMatrix* w, PackedTiles* out) {
  const int tiles = w->n / 16, nb = w->kp / 32, spr = w->kp / w->group;
  if (tiles == 0) return;
  const size_t rb = w->RowBytes(), tbb = TileBlockBytes(*w);
  const bool q8 = w->format == WFormat::kQ8, mins = w->format == WFormat::kQ4Min;
  out->tiles.assign(static_cast<size_t>(tiles) * nb * tbb, 0);
  out->scales.assign(static_cast<size_t>(tiles) * nb * 16, 0);
  if (mins) out->mins.assign(static_cast<size_t>(tiles) * nb * 16, 0);
  for (int t = 0; t < tiles; ++t)
    for (int b = 0; b < nb; ++b) {
      const size_t tb = static_cast<size_t>(t) * nb + b;
      uint8_t* dst = out->tiles.data() + tb * tbb;
      for (int n = 0; n < 16; ++n) {
        const int r = t * 16 + n;
        const uint8_t* row = w->packed + static_cast<size_t>(r) * rb;
        for (int e = 0; e < (q8 ? 32 : 16); ++e) {
          const int at = 64 * (e / 4) + 4 * n + e % 4;
          dst[at] = q8 ? static_cast<uint8_t>(row[b * 32 + e] ^ 0x80) : row[b * 16 + e];
        }
        out->scales[tb * 16 + n] = w->scales[static_cast<size_t>(r) * spr + (b * 32) / w->group];
        if (mins) out->mins[tb * 16 + n] = w->mins[static_cast<size_t>(r) * nb + b];
      }
    }
  w->tiles = out->tiles.data();
  w->tile_scales = out->scales.data();
  w->tile_mins = mins ? out->mins.data() : nullptr;
}

// How far ahead the packed tiles are prefetched (they stream from memory once per call), into
// L2 (T1), not L1: an L1 prefetch holds one of the core's few line-fill buffers for a whole
// memory latency, which caps one core's stream; L2 has more outstanding misses to spend.
// Nano-1 decode on a Xeon with AMX: T0 at 4 KB 12.3 / 23.5 t/s on 1 / 2 threads, T1 at 16 KB
// 13.3 / 24.8, no prefetch 12.7 / 22.7.
constexpr int kPrefetchBytes = 16384;

inline __m512 HalfToF32(__m256i h, bool bf16) {
  return bf16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)) : _mm512_cvtph_ps(h);
}

// Row tile `tile`'s scales / mins in f32 into s.dw / s.mw.
void TileScales(const QMatrix& w, int tile, Scratch& s) {
  const int nb = w.kp / 32;
  const size_t tb0 = static_cast<size_t>(tile) * nb;
  Grow(s.dw, static_cast<size_t>(nb) * 16);
  const uint16_t* sc = w.tile_scales + tb0 * 16;
  for (int b = 0; b < nb; ++b)
    _mm512_storeu_ps(s.dw.data() + b * 16,
                     HalfToF32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sc + b * 16)), w.bf16_scales));
  if (w.format == WFormat::kQ4Min) {
    Grow(s.mw, static_cast<size_t>(nb) * 16);
    const uint16_t* mn = w.tile_mins + tb0 * 16;
    for (int b = 0; b < nb; ++b)
      _mm512_storeu_ps(s.mw.data() + b * 16,
                       _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(mn + b * 16))));
  }
}

// Blocks [b0, b1) of row tile `tile` as B tiles into s.wt at block b (kQ4: u - 8, kQ4Min: u).
// kQ8 tiles are used in place (not copied).
void UnpackBlocks(const QMatrix& w, int tile, int b0, int b1, Scratch& s) {
  const int nb = w.kp / 32;  // s.wt holds nb blocks (QMatMulTiles)
  const uint8_t* src = w.tiles + static_cast<size_t>(tile) * nb * 256;
  const __m512i nibble = _mm512_set1_epi8(0x0F);
  const __m512i offset = _mm512_set1_epi8(w.format == WFormat::kQ4 ? 8 : 0);
  for (int b = b0; b < b1; ++b) {
    int8_t* out = s.wt.data() + static_cast<size_t>(b) * 512;
    for (int g = 0; g < 4; ++g) {
      const uint8_t* p = src + static_cast<size_t>(b) * 256 + 64 * g;
      _mm_prefetch(reinterpret_cast<const char*>(p) + kPrefetchBytes, _MM_HINT_T1);
      const __m512i v = _mm512_loadu_si512(p);
      _mm512_storeu_si512(out + 64 * g, _mm512_sub_epi8(_mm512_and_si512(v, nibble), offset));
      _mm512_storeu_si512(out + 64 * (g + 4),
                          _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(v, 4), nibble), offset));
    }
  }
}

// The B tiles of row tile `tile` (s.wt, or kQ8's packed bytes).
const int8_t* TileWeights(const QMatrix& w, int tile, const Scratch& s) {
  if (w.format == WFormat::kQ8) return reinterpret_cast<const int8_t*>(w.tiles + static_cast<size_t>(tile) * (w.kp / 32) * 512);
  return s.wt.data();
}

// Blocks b, b+1 (nblk = 1 or 2) of 16 tokens at xq (row stride kp) against the B tiles at wt,
// into result tiles C0, C1 (activations in tiles 4-5, weights 6-7); StoreDots writes them to
// s.c[C0], s.c[C1]. (The tile intrinsics take literal register numbers: one function per set.)
#define GEMINI_AMX_SET(C0, C1)                                                                   \
  template <bool kUnsignedW>                                                                     \
  inline void IssueDots##C0##C1(const int8_t* xq, int kp, const int8_t* wt, int b, int nblk) {   \
    _tile_loadd(4, xq + b * 32, kp);                                                             \
    _tile_loadd(6, wt + static_cast<size_t>(b) * 512, 64);                                       \
    _tile_zero(C0);                                                                              \
    if (kUnsignedW) _tile_dpbsud(C0, 4, 6); else _tile_dpbssd(C0, 4, 6);                         \
    if (nblk < 2) return;                                                                        \
    _tile_loadd(5, xq + (b + 1) * 32, kp);                                                       \
    _tile_loadd(7, wt + static_cast<size_t>(b + 1) * 512, 64);                                   \
    _tile_zero(C1);                                                                              \
    if (kUnsignedW) _tile_dpbsud(C1, 5, 7); else _tile_dpbssd(C1, 5, 7);                         \
  }                                                                                              \
  inline void StoreDots##C0##C1(int nblk, Scratch& s) {                                          \
    _tile_stored(C0, s.c[C0], 64);                                                               \
    if (nblk > 1) _tile_stored(C1, s.c[C1], 64);                                                 \
  }
GEMINI_AMX_SET(0, 1)
GEMINI_AMX_SET(2, 3)
#undef GEMINI_AMX_SET

// MT tokens (i0..i0+MT) x the 16 rows of tile `tile`: y[token, 16 tile ..]. Blocks go in pairs,
// software-pipelined over two sets of result tiles (0-1, 2-3): pair g+1's products are issued
// before pair g's are stored and accumulated, so the tile unit and the vector units overlap.
// unpack: the tile's weights are unpacked here, just ahead of their use (one token tile: the
// weight stream overlaps the products); otherwise the caller unpacked them all.
template <bool kMin, int MT>
void TokenTile(const QMatrix& w, const QActs& x, const int8_t* xq, int tile, bool unpack, int i0,
               float* y, int ldy, Scratch& s) {
  const int nb = w.kp / 32, pairs = (nb + 1) / 2, kp = w.kp;
  const bool q8 = w.format == WFormat::kQ8;
  int ready = unpack && !q8 ? 0 : nb;  // blocks unpacked so far
  auto prepare = [&](int pair) {       // unpack up to one pair beyond `pair`
    const int need = std::min(nb, 2 * pair + 4);
    if (ready < need) {
      UnpackBlocks(w, tile, ready, need, s);
      ready = need;
    }
  };
  const int8_t* wt = TileWeights(w, tile, s);
  __m512 acc[MT];
  for (int m = 0; m < MT; ++m) acc[m] = _mm512_setzero_ps();
  const float* xd = x.d.data() + static_cast<size_t>(i0) * nb;
  const float* xs = x.s.data() + static_cast<size_t>(i0) * nb;
  auto accumulate = [&](int pair, int set) {
    const int b = 2 * pair, nblk = std::min(2, nb - b);
    for (int p = 0; p < nblk; ++p) {
      const __m512 dw = _mm512_loadu_ps(s.dw.data() + (b + p) * 16);
      __m512 mw;
      if (kMin) mw = _mm512_loadu_ps(s.mw.data() + (b + p) * 16);
      const int32_t* c = s.c[2 * set + p];
      for (int m = 0; m < MT; ++m) {
        const size_t o = static_cast<size_t>(m) * nb + b + p;
        const __m512 dot = _mm512_cvtepi32_ps(_mm512_load_si512(c + 16 * m));
        acc[m] = _mm512_fmadd_ps(dot, _mm512_mul_ps(dw, _mm512_set1_ps(xd[o])), acc[m]);
        if (kMin) acc[m] = _mm512_fmadd_ps(mw, _mm512_set1_ps(xs[o]), acc[m]);
      }
    }
  };
  auto nblk = [&](int pair) { return std::min(2, nb - 2 * pair); };
  prepare(0);
  IssueDots01<kMin>(xq, kp, wt, 0, nblk(0));
  for (int g = 0; g < pairs; g += 2) {
    if (g + 1 < pairs) {
      prepare(g + 1);
      IssueDots23<kMin>(xq, kp, wt, 2 * (g + 1), nblk(g + 1));
    }
    StoreDots01(nblk(g), s);
    accumulate(g, 0);
    if (g + 1 >= pairs) break;
    if (g + 2 < pairs) {
      prepare(g + 2);
      IssueDots01<kMin>(xq, kp, wt, 2 * (g + 2), nblk(g + 2));
    }
    StoreDots23(nblk(g + 1), s);
    accumulate(g + 1, 1);
  }
  for (int m = 0; m < MT; ++m) _mm512_storeu_ps(y + static_cast<size_t>(i0 + m) * ldy + 16 * tile, acc[m]);
}

template <bool kMin>
void PartialTile(int mt, const QMatrix& w, const QActs& x, const int8_t* xq, int tile, bool unpack,
                 int i0, float* y, int ldy, Scratch& s) {
  switch (mt) {
#define GEMINI_AMX_CASE(n) case n: return TokenTile<kMin, n>(w, x, xq, tile, unpack, i0, y, ldy, s);
    GEMINI_AMX_CASE(1) GEMINI_AMX_CASE(2) GEMINI_AMX_CASE(3) GEMINI_AMX_CASE(4)
    GEMINI_AMX_CASE(5) GEMINI_AMX_CASE(6) GEMINI_AMX_CASE(7) GEMINI_AMX_CASE(8)
    GEMINI_AMX_CASE(9) GEMINI_AMX_CASE(10) GEMINI_AMX_CASE(11) GEMINI_AMX_CASE(12)
    GEMINI_AMX_CASE(13) GEMINI_AMX_CASE(14) GEMINI_AMX_CASE(15) GEMINI_AMX_CASE(16)
#undef GEMINI_AMX_CASE
  }
}

template <bool kMin>
void QMatMulTiles(const QMatrix& w, const QActs& x, float* y, int ldy, int r0, int r1, Scratch& s) {
  const int t = x.t, kp = w.kp, full = t / 16 * 16, rest = t - full;
  const int8_t* pad = nullptr;
  if (rest > 0) {  // the last token tile's rows, zero-padded to 16 (a tile load reads 16 rows)
    Grow(s.xpad, static_cast<size_t>(16) * kp);
    std::memcpy(s.xpad.data(), x.qrow(full), static_cast<size_t>(rest) * kp);
    std::memset(s.xpad.data() + static_cast<size_t>(rest) * kp, 0, static_cast<size_t>(16 - rest) * kp);
    pad = s.xpad.data();
  }
  Grow(s.wt, static_cast<size_t>(kp / 32) * 512);  // before any pointer into it is taken
  for (int tile = r0 / 16; tile < r1 / 16; ++tile) {
    TileScales(w, tile, s);
    const bool once = full + (rest > 0 ? 16 : 0) == 16;  // one token tile: unpack as it goes
    if (!once && w.format != WFormat::kQ8) UnpackBlocks(w, tile, 0, w.kp / 32, s);
    for (int i = 0; i < full; i += 16) TokenTile<kMin, 16>(w, x, x.qrow(i), tile, once, i, y, ldy, s);
    if (rest > 0) PartialTile<kMin>(rest, w, x, pad, tile, once, full, y, ldy, s);
  }
}

// Fewer than kMinTokens tokens (decode): the same packed tiles with 512-bit vpdpbusd, one token
// at a time, 16 weight rows per vector. Each block's dot is the exact integer sum the tile unit
// computes (sum u q, minus 8 (kQ4) or 128 (kQ8) times sum q), and the f32 accumulation is the
// AMX path's, op for op, so a token's result does not depend on how many tokens share the call
// (batched greedy decoding equals one sequence at a time).
template <WFormat F>
void TileVec(const QMatrix& w, const QActs& x, int i, int tile, float* y) {
  const int nb = w.kp / 32;
  const size_t tb0 = static_cast<size_t>(tile) * nb;
  const __m512i nibble = _mm512_set1_epi8(0x0F), flip = _mm512_set1_epi8(static_cast<char>(0x80));
  const int8_t* q = x.qrow(i);
  const float* xd = x.d.data() + static_cast<size_t>(i) * nb;
  const float* xs = x.s.data() + static_cast<size_t>(i) * nb;
  const int32_t* sq = x.sumq.data() + static_cast<size_t>(i) * nb;
  __m512 acc = _mm512_setzero_ps();
  for (int b = 0; b < nb; ++b) {
    const size_t tb = tb0 + b;
    const int32_t* xb = reinterpret_cast<const int32_t*>(q + b * 32);
    __m512i d = _mm512_setzero_si512();
    if (F == WFormat::kQ8) {
      const uint8_t* p = w.tiles + tb * 512;
      for (int kk = 0; kk < 8; ++kk) {
        _mm_prefetch(reinterpret_cast<const char*>(p + 64 * kk) + kPrefetchBytes, _MM_HINT_T1);
        const __m512i u = _mm512_xor_si512(_mm512_loadu_si512(p + 64 * kk), flip);
        d = _mm512_dpbusd_epi32(d, u, _mm512_set1_epi32(xb[kk]));
      }
      d = _mm512_sub_epi32(d, _mm512_set1_epi32(128 * sq[b]));
    } else {
      const uint8_t* p = w.tiles + tb * 256;
      for (int g = 0; g < 4; ++g) {
        _mm_prefetch(reinterpret_cast<const char*>(p + 64 * g) + kPrefetchBytes, _MM_HINT_T1);
        const __m512i v = _mm512_loadu_si512(p + 64 * g);
        d = _mm512_dpbusd_epi32(d, _mm512_and_si512(v, nibble), _mm512_set1_epi32(xb[g]));
        d = _mm512_dpbusd_epi32(d, _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble), _mm512_set1_epi32(xb[4 + g]));
      }
      if (F == WFormat::kQ4) d = _mm512_sub_epi32(d, _mm512_set1_epi32(8 * sq[b]));
    }
    const __m512 dw = HalfToF32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.tile_scales + tb * 16)),
                                w.bf16_scales);
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(dw, _mm512_set1_ps(xd[b])), acc);
    if (F == WFormat::kQ4Min) {
      const __m512 mw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.tile_mins + tb * 16)));
      acc = _mm512_fmadd_ps(mw, _mm512_set1_ps(xs[b]), acc);
    }
  }
  _mm512_storeu_ps(y + 16 * tile, acc);
}

template <WFormat F>
void QMatMulVec(const QMatrix& w, const QActs& x, float* y, int ldy, int r0, int r1) {
  for (int tile = r0 / 16; tile < r1 / 16; ++tile)
    for (int i = 0; i < x.t; ++i) TileVec<F>(w, x, i, tile, y + static_cast<size_t>(i) * ldy);
}

// Rows [r0, r1): the whole 16-row tiles in [r0, r1) on AMX, anything else on AVX-512.
void QMatMulAmx(const QMatrix& w, const QActs& x, float* y, int ldy, int r0, int r1) {
  const QMatMulFn fallback = Avx512Kernels()->qmatmul;
  const int a = (r0 + 15) / 16 * 16, e = std::min(r1, w.n / 16 * 16) / 16 * 16;
  if (w.tiles == nullptr || a >= e) return fallback(w, x, y, ldy, r0, r1);
  if (r0 < a) fallback(w, x, y, ldy, r0, a);
  if (x.t < kMinTokens) {
    switch (w.format) {
      case WFormat::kQ4: QMatMulVec<WFormat::kQ4>(w, x, y, ldy, a, e); break;
      case WFormat::kQ4Min: QMatMulVec<WFormat::kQ4Min>(w, x, y, ldy, a, e); break;
      case WFormat::kQ8: QMatMulVec<WFormat::kQ8>(w, x, y, ldy, a, e); break;
    }
    if (e < r1) fallback(w, x, y, ldy, e, r1);
    return;
  }
  Scratch& s = ThreadScratch();
  ConfigureTiles();
  if (w.format == WFormat::kQ4Min) QMatMulTiles<true>(w, x, y, ldy, a, e, s);
  else QMatMulTiles<false>(w, x, y, ldy, a, e, s);
  _tile_release();
  if (e < r1) fallback(w, x, y, ldy, e, r1);
}

}  // namespace

bool AmxUsable() {
  // The kernel enables tile data per process on request (Linux >= 5.16).
  static const bool ok = [] {
    constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
}

const Kernels* AmxKernels() {
  static const Kernels k = [] {
    Kernels k = *Avx512Kernels();
    k.name = "amx";
    k.qmatmul = QMatMulAmx;
    k.row_tile = 16;
    k.pack = PackAmx;
    return k;
  }();
  return &k;
}

}  // namespace gemini::runtime

#else
namespace gemini::runtime {
bool AmxUsable() { return false; }
const Kernels* AmxKernels() { return nullptr; }
}  // namespace gemini::runtime
#endif
