#include "csrc/runtime/model.h"

#include <algorithm>
#include <ctime>
#include <cmath>
#include <cstring>
#include <map>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>

namespace gemini::runtime {
namespace {

Int4Matrix MatrixOf(const TensorView& t) {
  Int4Matrix m;
  m.n = static_cast<int>(t.shape[0]);
  m.k = static_cast<int>(t.shape[1]);
  m.group = static_cast<int>(t.group_size);
  m.kp = (m.k + m.group - 1) / m.group * m.group;
  m.bf16_scales = t.dtype == kInt4BF16;
  m.packed = t.data;
  m.scales = reinterpret_cast<const uint16_t*>(t.data + static_cast<size_t>(m.n) * m.kp / 2);
  return m;
}

uint64_t MatrixBytes(const QMatrix& m) { return m.Bytes(); }

int RoundUp(int x, int m) { return (x + m - 1) / m * m; }

void RmsNorm(const float* x, const float* scale, int d, float eps, float* y) {
  float ss = 0.f;
  for (int i = 0; i < d; ++i) ss += x[i] * x[i];
  float inv = 1.0f / std::sqrt(ss / static_cast<float>(d) + eps);
  for (int i = 0; i < d; ++i) y[i] = x[i] * inv * scale[i];
}

// Adds the scope's time to one OpProfile entry; free when profiling is off.
class OpTimer {
 public:
  OpTimer(OpProfile* p, int op) : p_(p), op_(op) {
    if (p_ != nullptr) t0_ = Now(p_->cpu_clock);
  }
  ~OpTimer() {
    if (p_ != nullptr) p_->seconds[op_] += Now(p_->cpu_clock) - t0_;
  }

 private:
  static double Now(bool cpu) {
    timespec ts;
    clock_gettime(cpu ? CLOCK_THREAD_CPUTIME_ID : CLOCK_MONOTONIC, &ts);
    return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
  }
  OpProfile* p_;
  int op_;
  double t0_ = 0;
};

}  // namespace

const char* OpProfile::Name(int op) {
  static const char* const kNames[kOps] = {"embed+rope angles", "rmsnorm", "quantize acts", "q/k/v matmul",
                                           "qk-norm+rope+kv store", "attention", "wo matmul", "gate/up matmul",
                                           "activation", "down matmul", "logits"};
  return op >= 0 && op < kOps ? kNames[op] : "?";
}

std::unique_ptr<Model> Model::FromFile(std::shared_ptr<GnbFile> file, const Kernels& kernels) {
  std::unique_ptr<Model> m(new Model());
  m->config_ = file->config();
  m->kernels_ = &kernels;
  m->file_ = file;
  m->embed_ = MatrixOf(file->Get("embed"));
  if (!m->config_.tie_embeddings) m->unembed_ = MatrixOf(file->Get("unembed"));
  m->final_norm_ = reinterpret_cast<const float*>(file->Get("final_norm").data);
  for (int i = 0; i < m->config_.n_layers; ++i) {
    std::string p = "layers." + std::to_string(i) + ".";
    LayerWeights l;
    l.attn_norm = reinterpret_cast<const float*>(file->Get(p + "attn_norm").data);
    l.mlp_norm = reinterpret_cast<const float*>(file->Get(p + "mlp_norm").data);
    // qk_norm models carry both (the reader checks them against the config).
    if (m->config_.qk_norm) {
      l.q_norm = reinterpret_cast<const float*>(file->Get(p + "q_norm").data);
      l.k_norm = reinterpret_cast<const float*>(file->Get(p + "k_norm").data);
    }
    l.wq = MatrixOf(file->Get(p + "wq"));
    l.wk = MatrixOf(file->Get(p + "wk"));
    l.wv = MatrixOf(file->Get(p + "wv"));
    l.wo = MatrixOf(file->Get(p + "wo"));
    l.w_gate = MatrixOf(file->Get(p + "w_gate"));
    l.w_up = MatrixOf(file->Get(p + "w_up"));
    l.w_down = MatrixOf(file->Get(p + "w_down"));
    m->layers_.push_back(l);
  }
  m->PackForKernels();
  return m;
}

void Model::PackForKernels() {
  if (kernels_->pack == nullptr) return;
  auto pack = [&](QMatrix* w) {
    tiles_.push_back(std::make_unique<PackedTiles>());
    kernels_->pack(w, tiles_.back().get());
  };
  pack(&embed_);
  if (!config_.tie_embeddings) pack(&unembed_);
  for (LayerWeights& l : layers_)
    for (QMatrix* w : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down}) pack(w);
}

std::unique_ptr<Model> Model::FromParts(const ModelConfig& config, const Kernels& kernels,
                                        std::vector<uint8_t> arena, std::vector<float> norms,
                                        std::vector<LayerWeights> layers, QMatrix embed,
                                        QMatrix unembed, const float* final_norm) {
  std::unique_ptr<Model> m(new Model());
  m->config_ = config;
  m->kernels_ = &kernels;
  m->owned_ = std::move(arena);   // moving a vector keeps its buffer: the pointers stay valid
  m->owned_norms_ = std::move(norms);
  m->layers_ = std::move(layers);
  m->embed_ = embed;
  m->unembed_ = unembed;
  m->final_norm_ = final_norm;
  m->PackForKernels();
  return m;
}

std::unique_ptr<Model> Model::Random(const ModelConfig& c, uint64_t seed, const Kernels& kernels) {
  std::unique_ptr<Model> m(new Model());
  m->config_ = c;
  m->kernels_ = &kernels;
  const int g = c.group_size;
  // The tensors a file of this config would hold (gnb.h's one list), generated in place.
  const std::vector<TensorSpec> spec = ExpectedTensors(c);
  std::vector<Int4Matrix> mats;
  size_t norm_floats = 0;
  uint64_t total = 0;
  for (const TensorSpec& t : spec) {
    if (!t.int4) {
      norm_floats += t.shape[0];
      continue;
    }
    Int4Matrix w;
    w.n = static_cast<int>(t.shape[0]); w.k = static_cast<int>(t.shape[1]); w.group = g; w.kp = RoundUp(w.k, g);
    total += (MatrixBytes(w) + 63) / 64 * 64;
    mats.push_back(w);
  }
  m->owned_.resize(total);
  uint64_t state = seed * 0x9E3779B97F4A7C15ULL + 1;
  uint64_t off = 0;
  for (Int4Matrix& w : mats) {
    uint8_t* p = m->owned_.data() + off;
    uint64_t packed = static_cast<uint64_t>(w.n) * w.kp / 2;
    for (uint64_t i = 0; i < packed; i += 8) {  // xorshift64*: fast, plenty random for timing
      state ^= state >> 12; state ^= state << 25; state ^= state >> 27;
      uint64_t r = state * 2685821657736338717ULL;
      std::memcpy(p + i, &r, std::min<uint64_t>(8, packed - i));
    }
    // Scale ~ 1/(4 sqrt(K)) keeps activations O(1); f16 bits of that value.
    float s = 0.25f / std::sqrt(static_cast<float>(w.k));
    uint32_t bits;
    std::memcpy(&bits, &s, 4);
    uint16_t h = static_cast<uint16_t>(((bits >> 16) & 0x8000) | ((((bits >> 23) & 0xFF) - 112) << 10) | ((bits >> 13) & 0x3FF));
    uint16_t* sc = reinterpret_cast<uint16_t*>(p + packed);
    for (uint64_t i = 0; i < static_cast<uint64_t>(w.n) * (w.kp / g); ++i) sc[i] = h;
    w.packed = p;
    w.scales = sc;
    off += (MatrixBytes(w) + 63) / 64 * 64;
  }
  m->owned_norms_.assign(norm_floats, 1.0f);
  // Bound by name, as FromFile binds a file's tensors.
  std::map<std::string, const Int4Matrix*> matrix;
  std::map<std::string, const float*> norm;
  size_t mi = 0, ni = 0;
  for (const TensorSpec& t : spec) {
    if (t.int4) {
      matrix[t.name] = &mats[mi++];
    } else {
      norm[t.name] = m->owned_norms_.data() + ni;
      ni += t.shape[0];
    }
  }
  m->embed_ = *matrix.at("embed");
  if (!c.tie_embeddings) m->unembed_ = *matrix.at("unembed");
  for (int i = 0; i < c.n_layers; ++i) {
    const std::string p = "layers." + std::to_string(i) + ".";
    LayerWeights l;
    l.attn_norm = norm.at(p + "attn_norm");
    l.mlp_norm = norm.at(p + "mlp_norm");
    l.wq = *matrix.at(p + "wq"); l.wk = *matrix.at(p + "wk"); l.wv = *matrix.at(p + "wv");
    l.wo = *matrix.at(p + "wo"); l.w_gate = *matrix.at(p + "w_gate");
    l.w_up = *matrix.at(p + "w_up"); l.w_down = *matrix.at(p + "w_down");
    m->layers_.push_back(l);
  }
  m->final_norm_ = norm.at("final_norm");
  m->PackForKernels();
  return m;
}

uint64_t Model::WeightBytesPerToken() const {
  uint64_t b = MatrixBytes(unembed()) + embed_.Bytes() / std::max(1, embed_.n);
  for (const LayerWeights& l : layers_)
    for (const Int4Matrix* w : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down})
      b += MatrixBytes(*w);
  return b + 4ULL * config_.d_model * (2 * config_.n_layers + 1);
}



KvCache::KvCache(const ModelConfig& c, int max_len, bool f16)
    : KvCache(c.n_layers, c.n_kv_heads * c.head_dim, max_len, f16) {}

KvCache::KvCache(int layers, int width, int max_len, bool f16)
    : layers_(layers), width_(width), max_len_(max_len), f16_(f16) {
  if (max_len < 1) throw std::invalid_argument("KV cache max_len must be >= 1, got " + std::to_string(max_len));
  size_t n = static_cast<size_t>(layers_) * max_len * width_;
  if (f16) {
    k16_.assign(n, 0);
    v16_.assign(n, 0);
  } else {
    k32_.assign(n, 0.f);
    v32_.assign(n, 0.f);
  }
}

void KvCache::Truncate(int n) {
  if (n < 0 || n > length_)
    throw std::out_of_range("truncate(" + std::to_string(n) + "): the sequence has " + std::to_string(length_) +
                            " tokens (0 <= n <= length)");
  length_ = n;
}

std::unique_ptr<KvCache> KvCache::Clone() const {
  std::unique_ptr<KvCache> c(new KvCache(layers_, width_, max_len_, f16_));
  c->length_ = length_;
  const size_t n = static_cast<size_t>(length_) * width_;
  for (int l = 0; l < layers_; ++l) {
    const size_t at = At(l, 0);
    if (f16_) {
      std::copy_n(k16_.begin() + at, n, c->k16_.begin() + at);
      std::copy_n(v16_.begin() + at, n, c->v16_.begin() + at);
    } else {
      std::copy_n(k32_.begin() + at, n, c->k32_.begin() + at);
      std::copy_n(v32_.begin() + at, n, c->v32_.begin() + at);
    }
  }
  return c;
}

uint64_t KvCache::BytesPerToken() const {
  return 2ULL * layers_ * length_ * width_ * (f16_ ? 2 : 4);
}

Session::Session(const Model& model, int max_len, ThreadPool* pool, SessionOptions options)
    : cache_(model.config(), max_len, options.kv_f16), dec_(model, pool, options) {}

Decoder::Decoder(const Model& model, ThreadPool* pool, SessionOptions options)
    : m_(model), c_(model.config()), pool_(pool), opt_(options) {
  int widest = std::max({c_.d_model, c_.n_heads * c_.head_dim, c_.d_ff});
  ld_ = RoundUp(widest, 128);
  inv_freq_.resize(c_.head_dim / 2);
  for (int i = 0; i < c_.head_dim / 2; ++i)
    inv_freq_[i] = static_cast<float>(std::pow(c_.rope_base, -2.0 * i / c_.head_dim));
}

void Decoder::MatMul(const QMatrix& w, const float* x, int t, int ldx, float* y, int ldy) {
  const QMatrix* ws[1] = {&w};
  float* ys[1] = {y};
  MatMulN(ws, ys, 1, x, t, ldx, ldy);
}

// One ParallelFor over the rows of all n matrices (q/k/v, gate/up: the same input, quantised
// once), so the threads split their total and synchronise once. Parts are whole row tiles of
// the concatenation; a part may span matrices.
void Decoder::MatMulN(const QMatrix* const* ws, float* const* ys, int n, const float* x, int t, int ldx, int ldy) {
  const Kernels& kern = m_.kernels();
  int total = 0;
  for (int j = 0; j < n; ++j) total += ws[j]->n;
  if (opt_.int8_activations) {
    OpTimer timer(profile_, OpProfile::kQuantize);
    QuantizeActs(x, t, ldx, ws[0]->kp, &qa_, kern.quantize_row);
  }
  auto run = [&](int b, int e) {
    int base = 0;
    for (int j = 0; j < n && b < e; base += ws[j]->n, ++j) {
      const QMatrix& w = *ws[j];
      const int r0 = std::max(b, base) - base, r1 = std::min(e, base + w.n) - base;
      if (r0 >= r1) continue;
      if (opt_.int8_activations) kern.qmatmul(w, qa_, ys[j], ldy, r0, r1);
      else if (t == 1) kern.matvec(w, x, ys[j], r0, r1);
      else kern.matmul(w, x, t, ldx, ys[j], ldy, r0, r1);
    }
  };
  pool_->ParallelFor(total, run, opt_.int8_activations ? kern.row_tile : 8);
}

// Causal attention of the t rows over their sequences' caches. A job is one (row, kv head) pair
// and covers every query head of that GQA group, so each cached key/value row is read once for
// the whole group; a single-row step splits by query head instead, so 2 threads share even a
// 1-kv-head (MQA) model.
void Decoder::Attention(int layer, int t) {
  const int H = c_.n_heads, K = c_.n_kv_heads, Dh = c_.head_dim, group = H / K;
  const float scale = 1.0f / std::sqrt(static_cast<float>(Dh));
  const Kernels& kern = m_.kernels();
  const bool per_head = t == 1;
  const int jobs = per_head ? H : t * K;
  const int stride = score_stride_;
  pool_->ParallelFor(jobs, [&](int b, int e, int part) {
    float* s = scores_.data() + static_cast<size_t>(part) * group * stride;
    for (int job = b; job < e; ++job) {
      int i, h0, h1;
      if (per_head) { i = 0; h0 = job; h1 = job + 1; }
      else { i = job / K; h0 = (job % K) * group; h1 = h0 + group; }
      const KvCache& kv = *row_cache_[i];
      const bool f16 = kv.f16_;
      const int kvh = h0 / group, nh = h1 - h0;
      const int len = row_pos_[i] + 1;  // causal: this row sees positions 0..its own
      const size_t base = kv.At(layer, 0) + kvh * Dh;
      const size_t kvw = kv.width_;
      const float* q = q_.data() + static_cast<size_t>(i) * ld_;
      float* o = o_.data() + static_cast<size_t>(i) * ld_ + h0 * Dh;
      if (f16) {
        kern.attend_f16(q + h0 * Dh, nh, Dh, kv.k16_.data() + base, kv.v16_.data() + base, kvw, len, scale, s, o);
        continue;
      }
      // f32 cache (the parity path): plain loops.
      for (int hh = 0; hh < nh; ++hh) {
        float* sh = s + hh * stride;
        const float* qh = q + (h0 + hh) * Dh;
        for (int j = 0; j < len; ++j) {
          const float* kj = kv.k32_.data() + base + j * kvw;
          float d = 0.f;
          for (int x = 0; x < Dh; ++x) d += qh[x] * kj[x];
          sh[j] = d * scale;
        }
        float mx = -INFINITY, sum = 0.f;
        for (int j = 0; j < len; ++j) mx = std::max(mx, sh[j]);
        for (int j = 0; j < len; ++j) { sh[j] = std::exp(sh[j] - mx); sum += sh[j]; }
        const float inv = 1.0f / sum;
        float* oh = o + hh * Dh;
        std::fill(oh, oh + Dh, 0.f);
        for (int j = 0; j < len; ++j) {
          const float p = sh[j] * inv;
          const float* vj = kv.v32_.data() + base + j * kvw;
          for (int x = 0; x < Dh; ++x) oh[x] += p * vj[x];
        }
      }
    }
  }, 1);
}

void Decoder::StoreKv(int layer, int i) {
  KvCache& kv = *row_cache_[i];
  const int kvw = kv.width_;
  size_t at = kv.At(layer, row_pos_[i]);
  const float* k = &k_[static_cast<size_t>(i) * ld_];
  const float* v = &v_[static_cast<size_t>(i) * ld_];
  if (kv.f16_) {
    m_.kernels().to_f16(k, kv.k16_.data() + at, kvw);
    m_.kernels().to_f16(v, kv.v16_.data() + at, kvw);
  } else {
    std::memcpy(kv.k32_.data() + at, k, kvw * sizeof(float));
    std::memcpy(kv.v32_.data() + at, v, kvw * sizeof(float));
  }
}

void Decoder::CheckTokens(const int* tokens, int t) const {
  const int V = c_.vocab_size;
  for (int i = 0; i < t; ++i)
    if (tokens[i] < 0 || tokens[i] >= V)
      throw std::out_of_range("token id " + std::to_string(tokens[i]) + " outside the vocabulary [0, " + std::to_string(V) + ")");
}

void Decoder::Forward(KvCache* cache, const int* tokens, int t, float* last_logits,
                      std::vector<float>* all_logits) {
  if (t < 1) throw std::invalid_argument("Forward needs at least one token");
  if (cache->length_ + t > cache->max_len_)
    throw std::out_of_range("sequence of " + std::to_string(cache->length_ + t) +
                            " tokens exceeds the session's max_len=" + std::to_string(cache->max_len_));
  CheckTokens(tokens, t);
  if (row_cache_.size() < static_cast<size_t>(t)) { row_cache_.resize(t); row_pos_.resize(t); }
  for (int i = 0; i < t; ++i) { row_cache_[i] = cache; row_pos_[i] = cache->length_ + i; }
  const int V = c_.vocab_size;
  const int first = all_logits != nullptr ? 0 : t - 1;
  const size_t n = static_cast<size_t>(t - first) * V;
  if (logits_.size() < n) logits_.resize(n);
  if (logit_rows_.size() < static_cast<size_t>(t)) logit_rows_.resize(t);
  for (int i = first; i < t; ++i) logit_rows_[i - first] = i;
  Run(tokens, t, logit_rows_.data(), t - first, logits_.data());
  cache->length_ += t;
  if (all_logits != nullptr) all_logits->assign(logits_.begin(), logits_.begin() + n);
  if (last_logits != nullptr) std::memcpy(last_logits, logits_.data() + n - V, V * sizeof(float));
}

void Decoder::CheckCaches(KvCache* const* caches, const int* counts, int n, const char* what) const {
  const std::string w = what;
  if (n < 1) throw std::invalid_argument(w + " needs at least one sequence");
  for (int i = 0; i < n; ++i) {
    const KvCache* c = caches[i];
    const int count = counts == nullptr ? 1 : counts[i];
    if (count < 1)
      throw std::invalid_argument(w + ": sequence " + std::to_string(i) + " has no tokens (at least one each)");
    if (c->layers_ != c_.n_layers || c->width_ != c_.n_kv_heads * c_.head_dim)
      throw std::invalid_argument(w + ": sequence " + std::to_string(i) + "'s state belongs to another model");
    if (static_cast<int64_t>(c->length_) + count > c->max_len_)
      throw std::out_of_range(w + ": sequence " + std::to_string(i) + " of " + std::to_string(c->length_) +
                              " tokens + " + std::to_string(count) + " exceeds its max_len=" +
                              std::to_string(c->max_len_));
    for (int j = 0; j < i; ++j)
      if (caches[j] == c)
        throw std::invalid_argument(w + ": sequences " + std::to_string(j) + " and " + std::to_string(i) +
                                    " are the same state (each state advances once per call)");
  }
}

void Decoder::DecodeBatch(KvCache* const* caches, const int* tokens, int b, float* logits) {
  CheckCaches(caches, nullptr, b, "decode_batch");
  CheckTokens(tokens, b);
  if (row_cache_.size() < static_cast<size_t>(b)) { row_cache_.resize(b); row_pos_.resize(b); }
  if (logit_rows_.size() < static_cast<size_t>(b)) logit_rows_.resize(b);
  for (int i = 0; i < b; ++i) { row_cache_[i] = caches[i]; row_pos_[i] = caches[i]->length_; logit_rows_[i] = i; }
  Run(tokens, b, logit_rows_.data(), b, logits);
  for (int i = 0; i < b; ++i) ++caches[i]->length_;
}

void Decoder::ForwardBatch(KvCache* const* caches, const int* tokens, const int* counts, int n,
                           float* logits) {
  CheckCaches(caches, counts, n, "prefill_batch");
  int64_t total = 0;
  for (int i = 0; i < n; ++i) total += counts[i];
  if (total > (1 << 24)) throw std::invalid_argument("prefill_batch: " + std::to_string(total) + " tokens in one call");
  const int t = static_cast<int>(total);
  CheckTokens(tokens, t);
  if (row_cache_.size() < static_cast<size_t>(t)) { row_cache_.resize(t); row_pos_.resize(t); }
  if (logit_rows_.size() < static_cast<size_t>(n)) logit_rows_.resize(n);
  int r = 0;
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < counts[i]; ++j, ++r) { row_cache_[r] = caches[i]; row_pos_[r] = caches[i]->length_ + j; }
    logit_rows_[i] = r - 1;
  }
  Run(tokens, t, logit_rows_.data(), n, logits);
  for (int i = 0; i < n; ++i) caches[i]->length_ += counts[i];
}

void Decoder::Run(const int* tokens, int t, const int* logit_rows, int n_logits, float* out) {
  const int D = c_.d_model, H = c_.n_heads, Dh = c_.head_dim, F = c_.d_ff, V = c_.vocab_size;
  const int half = Dh / 2;
  const float eps = static_cast<float>(c_.norm_eps);
  size_t rows = static_cast<size_t>(t) * ld_;
  for (auto* b : {&x_, &h_, &q_, &k_, &v_, &o_, &g_, &u_})
    if (b->size() < rows) b->resize(rows, 0.f);
  score_stride_ = 0;
  for (int i = 0; i < t; ++i) score_stride_ = std::max(score_stride_, row_pos_[i] + 1);
  const size_t scores = static_cast<size_t>(pool_->size()) * (H / c_.n_kv_heads) * score_stride_;
  if (scores_.size() < scores) scores_.resize(scores);
  std::optional<OpTimer> timer;
  timer.emplace(profile_, OpProfile::kEmbed);
  // Embedding rows, dequantised from the quantised table (columns past D stay zero).
  if (embed_row_.size() < static_cast<size_t>(m_.embed().kp)) embed_row_.resize(m_.embed().kp);
  for (int i = 0; i < t; ++i) {
    DequantizeRow(m_.embed(), tokens[i], embed_row_.data());
    std::memcpy(&x_[static_cast<size_t>(i) * ld_], embed_row_.data(), D * sizeof(float));
  }
  // RoPE angles of each row's position, shared by every layer: rope_[i, j] = (cos, sin).
  if (rope_.size() < static_cast<size_t>(t) * half * 2) rope_.resize(static_cast<size_t>(t) * half * 2);
  for (int i = 0; i < t; ++i) {
    float position = static_cast<float>(row_pos_[i]);
    for (int j = 0; j < half; ++j) {
      float a = position * inv_freq_[j];
      rope_[(static_cast<size_t>(i) * half + j) * 2] = std::cos(a);
      rope_[(static_cast<size_t>(i) * half + j) * 2 + 1] = std::sin(a);
    }
  }
  for (int l = 0; l < c_.n_layers; ++l) {
    const LayerWeights& w = m_.layers()[l];
    timer.emplace(profile_, OpProfile::kNorm);
    for (int i = 0; i < t; ++i) RmsNorm(&x_[i * ld_], w.attn_norm, D, eps, &h_[i * ld_]);
    timer.emplace(profile_, OpProfile::kQkv);
    {
      const QMatrix* ws[3] = {&w.wq, &w.wk, &w.wv};
      float* ys[3] = {q_.data(), k_.data(), v_.data()};
      MatMulN(ws, ys, 3, h_.data(), t, ld_, ld_);
    }
    timer.emplace(profile_, OpProfile::kRope);
    for (int i = 0; i < t; ++i) {
      const float* cs = &rope_[static_cast<size_t>(i) * half * 2];
      // Per-head q/k RMSNorm (qk_norm models) then rotate-half RoPE.
      auto norm_rope = [&](float* v, int heads, const float* norm) {
        for (int hh = 0; hh < heads; ++hh) {
          float* x = v + hh * Dh;
          if (norm != nullptr) RmsNorm(x, norm, Dh, eps, x);
          for (int j = 0; j < half; ++j) {
            float c = cs[2 * j], sn = cs[2 * j + 1];
            float x1 = x[j], x2 = x[j + half];
            x[j] = x1 * c - x2 * sn;
            x[j + half] = x2 * c + x1 * sn;
          }
        }
      };
      norm_rope(&q_[i * ld_], H, w.q_norm);
      norm_rope(&k_[i * ld_], c_.n_kv_heads, w.k_norm);
      StoreKv(l, i);
    }
    timer.emplace(profile_, OpProfile::kAttention);
    Attention(l, t);
    timer.emplace(profile_, OpProfile::kWo);
    MatMul(w.wo, o_.data(), t, ld_, h_.data(), ld_);
    for (int i = 0; i < t; ++i)
      for (int d = 0; d < D; ++d) x_[i * ld_ + d] += h_[i * ld_ + d];
    timer.emplace(profile_, OpProfile::kNorm);
    for (int i = 0; i < t; ++i) RmsNorm(&x_[i * ld_], w.mlp_norm, D, eps, &h_[i * ld_]);
    timer.emplace(profile_, OpProfile::kGateUp);
    {
      const QMatrix* ws[2] = {&w.w_gate, &w.w_up};
      float* ys[2] = {g_.data(), u_.data()};
      MatMulN(ws, ys, 2, h_.data(), t, ld_, ld_);
    }
    timer.emplace(profile_, OpProfile::kActivation);
    const bool gelu = c_.activation == "gelu";
    for (int i = 0; i < t; ++i) m_.kernels().gated_act(&g_[i * ld_], &u_[i * ld_], F, gelu);
    timer.emplace(profile_, OpProfile::kDown);
    MatMul(w.w_down, g_.data(), t, ld_, h_.data(), ld_);
    for (int i = 0; i < t; ++i)
      for (int d = 0; d < D; ++d) x_[i * ld_ + d] += h_[i * ld_ + d];
  }
  // Logits of the asked rows.
  timer.emplace(profile_, OpProfile::kLogits);
  const int n = n_logits;
  for (int j = 0; j < n; ++j)
    RmsNorm(&x_[static_cast<size_t>(logit_rows[j]) * ld_], m_.final_norm(), D, eps, &h_[static_cast<size_t>(j) * ld_]);
  MatMul(m_.unembed(), h_.data(), n, ld_, out, V);
  if (c_.logit_softcap > 0) {
    float cap = static_cast<float>(c_.logit_softcap);
    for (size_t z = 0; z < static_cast<size_t>(n) * V; ++z) out[z] = cap * std::tanh(out[z] / cap);
  }
}

}  // namespace gemini::runtime
