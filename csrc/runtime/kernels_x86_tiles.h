// 256-bit int8-activation tile kernel shared by the AVX2 and AVX-VNNI translation units. Each
// includes this inside its own anonymous namespace after defining `struct Isa` with
//   static __m256i Dot(__m256i init, __m256i u, __m256i x)  // init + per-lane sums of u8 * s8
// so every instance is compiled for, and linked privately to, its own ISA (no std:: templates
// here: an inline function emitted with AVX-512 must never be shared with the AVX2 path).
//
// Tile<F, R, T>: R weight rows x T tokens. Per 32-block the R rows are unpacked once into
// registers and multiplied with every token's block; accumulators stay in registers.

inline float ScaleOf(const QMatrix& w, const uint16_t* s) {
  return w.bf16_scales ? BF16ToF32(*s) : _cvtsh_ss(*s);
}

inline float HSum256(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
  return _mm_cvtss_f32(lo);
}

// 32 unsigned weight values of one block, in element order.
template <WFormat F>
inline __m256i Unpack(const uint8_t* p) {
  if (F == WFormat::kQ8) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  __m256i both = _mm256_set_m128i(_mm_srli_epi16(b, 4), b);
  return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}

template <WFormat F, int R, int T>
void Tile(const QMatrix& w, const QActs& x, int r, int i0, float* y, int ldy) {
  const int nb = w.kp / 32, spr = w.kp / w.group, bpg = w.group / 32;
  const int bytes = F == WFormat::kQ8 ? 32 : 16;
  const uint8_t* rows[R];
  for (int a = 0; a < R; ++a) rows[a] = w.packed + static_cast<size_t>(r + a) * w.RowBytes();
  __m256 acc[R][T];
  float corr[R][T];
  for (int a = 0; a < R; ++a)
    for (int c = 0; c < T; ++c) { acc[a][c] = _mm256_setzero_ps(); corr[a][c] = 0.f; }
  for (int b = 0; b < nb; ++b) {
    __m256i u[R];
    float dw[R], mw[R];
    for (int a = 0; a < R; ++a) {
      if (T == 1 && b % 4 == 0) {  // decode streams the matrix once: prefetch 8 KB ahead
        _mm_prefetch(reinterpret_cast<const char*>(rows[a] + b * bytes) + 8192, _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(w.scales + static_cast<size_t>(r + a) * spr + b / bpg) + 1024,
                     _MM_HINT_T0);
      }
      u[a] = Isa::template Prepare<F>(Unpack<F>(rows[a] + b * bytes));
      dw[a] = ScaleOf(w, w.scales + static_cast<size_t>(r + a) * spr + b / bpg);
      if (F == WFormat::kQ4Min) mw[a] = _cvtsh_ss(w.mins[static_cast<size_t>(r + a) * nb + b]);
    }
    for (int c = 0; c < T; ++c) {
      const size_t o = static_cast<size_t>(i0 + c) * nb + b;
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.qrow(i0 + c) + b * 32));
      const __m256i init = Isa::template Init<F>(x, o);
      const float dx = x.d[o];
      for (int a = 0; a < R; ++a) {
        __m256i dot = Isa::template DotF<F>(init, u[a], xv);
        acc[a][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(dw[a] * dx), acc[a][c]);
        // an explicit fma: a contracted or uncontracted a * b + c could differ between tile
        // shapes, and a token's result must not depend on the batch around it
        if (F == WFormat::kQ4Min) corr[a][c] = std::fma(mw[a], x.s[o], corr[a][c]);
      }
    }
  }
  for (int a = 0; a < R; ++a)
    for (int c = 0; c < T; ++c)
      y[static_cast<size_t>(i0 + c) * ldy + r + a] = HSum256(acc[a][c]) + corr[a][c];
}

// Rows [r0, r1) x all tokens: full R x T tiles, then token and row remainders.
template <WFormat F, int R, int T>
void QMatMulFormat(const QMatrix& w, const QActs& x, float* y, int ldy, int r0, int r1) {
  int r = r0;
  for (; r + R <= r1; r += R) {
    int i = 0;
    for (; i + T <= x.t; i += T) Tile<F, R, T>(w, x, r, i, y, ldy);
    for (; i < x.t; ++i) Tile<F, R, 1>(w, x, r, i, y, ldy);
  }
  for (; r < r1; ++r) {
    int i = 0;
    for (; i + T <= x.t; i += T) Tile<F, 1, T>(w, x, r, i, y, ldy);
    for (; i < x.t; ++i) Tile<F, 1, 1>(w, x, r, i, y, ldy);
  }
}

template <int R, int T>
void QMatMul256(const QMatrix& w, const QActs& x, float* y, int ldy, int r0, int r1) {
  static_assert(R == 4, "decode tiles are 4 rows: R must be 4 so row chunks stay aligned");
  switch (w.format) {
    case WFormat::kQ4: return QMatMulFormat<WFormat::kQ4, R, T>(w, x, y, ldy, r0, r1);
    case WFormat::kQ4Min: return QMatMulFormat<WFormat::kQ4Min, R, T>(w, x, y, ldy, r0, r1);
    case WFormat::kQ8: return QMatMulFormat<WFormat::kQ8, R, T>(w, x, y, ldy, r0, r1);
  }
}
