// The text decoder forward on quantised weights (the repo's shared math conventions: RMSNorm,
// optional per-head q/k RMSNorm before rotate-half RoPE, GQA/MQA with an f32 softmax, gated MLP
// (gelu-tanh / silu), tied/untied logits, soft-cap).
#ifndef GEMINI_CSRC_RUNTIME_MODEL_H_
#define GEMINI_CSRC_RUNTIME_MODEL_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "csrc/runtime/gnb.h"
#include "csrc/runtime/kernels.h"
#include "csrc/runtime/thread_pool.h"

namespace gemini::runtime {

struct LayerWeights {
  const float* attn_norm = nullptr;
  const float* mlp_norm = nullptr;
  const float* q_norm = nullptr;  // [Dh] when the model has qk_norm, else null
  const float* k_norm = nullptr;
  QMatrix wq, wk, wv, wo, w_gate, w_up, w_down;
};

class Model {
 public:
  // Views into a validated file (kept alive by the model).
  static std::unique_ptr<Model> FromFile(std::shared_ptr<GnbFile> file, const Kernels& kernels);
  // Random int4 weights of `config`'s shapes, generated in place (benchmarks: no float copy).
  static std::unique_ptr<Model> Random(const ModelConfig& config, uint64_t seed,
                                       const Kernels& kernels);
  // A model whose weights live in `arena` (the GGUF loader repacks into it). The matrices and
  // norm pointers in `layers` etc. point into arena or norms.
  static std::unique_ptr<Model> FromParts(const ModelConfig& config, const Kernels& kernels,
                                          std::vector<uint8_t> arena, std::vector<float> norms,
                                          std::vector<LayerWeights> layers, QMatrix embed,
                                          QMatrix unembed, const float* final_norm);

  const ModelConfig& config() const { return config_; }
  const Kernels& kernels() const { return *kernels_; }
  const std::vector<LayerWeights>& layers() const { return layers_; }
  const QMatrix& embed() const { return embed_; }
  const QMatrix& unembed() const { return config_.tie_embeddings ? embed_ : unembed_; }
  const float* final_norm() const { return final_norm_; }
  // Weight bytes one decode step reads (every matrix once, plus one embedding row).
  uint64_t WeightBytesPerToken() const;
  const GnbFile* file() const { return file_.get(); }

 private:
  Model() = default;
  // The kernels' own copy of every matrix when they want one (Kernels::pack: AMX tiles).
  void PackForKernels();
  ModelConfig config_;
  const Kernels* kernels_ = nullptr;
  std::shared_ptr<GnbFile> file_;
  std::vector<uint8_t> owned_;          // Random()/FromParts(): packed data + scales
  std::vector<float> owned_norms_;
  std::vector<LayerWeights> layers_;
  QMatrix embed_, unembed_;
  const float* final_norm_ = nullptr;
  std::vector<std::unique_ptr<PackedTiles>> tiles_;
};

struct SessionOptions {
  bool int8_activations = true;  // false: the f32-activation kernels (accuracy reference)
  bool kv_f16 = true;            // false: f32 KV cache (parity tests)
};

// One sequence's state: its KV cache [L, max_len, K*Dh] (f16 or f32) and its length. A serving
// slot keeps one between steps; Truncate drops the cache past n (prefix reuse), Clone snapshots
// it (a prefix cache).
class KvCache {
 public:
  KvCache(const ModelConfig& config, int max_len, bool f16);
  int length() const { return length_; }
  int max_len() const { return max_len_; }
  bool f16() const { return f16_; }
  // Keeps positions [0, n). Throws std::out_of_range unless 0 <= n <= length().
  void Truncate(int n);
  // An independent copy (only the first length() positions of each layer are copied).
  std::unique_ptr<KvCache> Clone() const;
  // Bytes of KV cache one decode step at the current length reads.
  uint64_t BytesPerToken() const;

 private:
  friend class Decoder;
  KvCache(int layers, int width, int max_len, bool f16);
  size_t At(int layer, int position) const {
    return (static_cast<size_t>(layer) * max_len_ + position) * width_;
  }
  int layers_, width_, max_len_, length_ = 0;
  bool f16_;
  std::vector<float> k32_, v32_;    // f32 cache
  std::vector<uint16_t> k16_, v16_; // f16 cache
};

// Seconds spent per part of the forward, summed over calls (Decoder::set_profile): the per-op
// breakdown bench_native --profile prints.
struct OpProfile {
  enum Op { kEmbed, kNorm, kQuantize, kQkv, kRope, kAttention, kWo, kGateUp, kActivation, kDown, kLogits, kOps };
  static const char* Name(int op);
  double seconds[kOps] = {};
  // false: wall time; true: the calling thread's CPU time (1 thread on a loaded machine: the
  // time the thread actually ran).
  bool cpu_clock = false;
};

// The decoder forward over rows of (sequence, token): one sequence's prompt chunk (prefill) or
// one token of each of B sequences (batched decode). Every weight matrix is read once per call
// for all rows (the rows x tokens tile kernels). Scratch buffers only grow, so after the first
// call of a given size nothing is allocated. Not thread-safe: one call at a time.
class Decoder {
 public:
  Decoder(const Model& model, ThreadPool* pool, SessionOptions options = {});

  // Runs tokens[0, t) of one sequence at positions cache->length().. and appends them to the
  // cache. Writes the last token's logits [V] to `last_logits` (if not null) and all t rows
  // [t, V] to `all_logits` (if not null). Throws std::out_of_range past max_len or for a token
  // outside the vocab; the cache is unchanged then.
  void Forward(KvCache* cache, const int* tokens, int t, float* last_logits,
               std::vector<float>* all_logits);
  // One token for each of b distinct sequences: caches[i] advances by tokens[i]; logits [b, V]
  // (row stride V). Throws std::invalid_argument if a cache repeats, std::out_of_range as
  // Forward (no cache is changed then).
  void DecodeBatch(KvCache* const* caches, const int* tokens, int b, float* logits);
  // Ragged rows of n distinct sequences in one forward (several prompts' prefill chunks, or a
  // mix of chunks and single decode tokens): sequence i's counts[i] >= 1 tokens are the next
  // counts[i] of `tokens` (concatenated in sequence order) at positions caches[i]->length()..;
  // each cache advances by its count and the logits of each sequence's last token go to row i
  // of `logits` [n, V]. Refusals as DecodeBatch (no cache is changed then).
  void ForwardBatch(KvCache* const* caches, const int* tokens, const int* counts, int n,
                    float* logits);
  const SessionOptions& options() const { return opt_; }
  const Model& model() const { return m_; }
  // Times each part of later calls into `p` (nullptr: off, the default).
  void set_profile(OpProfile* p) { profile_ = p; }

 private:
  // The forward of rows (row_cache_[i], row_pos_[i], tokens[i]) for i < t; the logits of rows
  // logit_rows[j], j < n_logits, go to row j of `out` (stride V).
  void Run(const int* tokens, int t, const int* logit_rows, int n_logits, float* out);
  // The checks of DecodeBatch / ForwardBatch (`what` names the call in messages): distinct
  // caches of this model, each with room for its count (counts == nullptr: 1 each).
  void CheckCaches(KvCache* const* caches, const int* counts, int n, const char* what) const;
  // y = x W^T over t rows (int8 activations: x quantised once by QuantizeActs).
  void MatMul(const QMatrix& w, const float* x, int t, int ldx, float* y, int ldy);
  // ys[j] = x ws[j]^T for n matrices of one input width, in one parallel job.
  void MatMulN(const QMatrix* const* ws, float* const* ys, int n, const float* x, int t, int ldx, int ldy);
  void Attention(int layer, int t);
  void StoreKv(int layer, int i);
  void CheckTokens(const int* tokens, int t) const;

  const Model& m_;
  const ModelConfig& c_;
  ThreadPool* pool_;
  SessionOptions opt_;
  int ld_;                                    // scratch row stride (>= every padded K)
  std::vector<KvCache*> row_cache_;           // [t] the sequence of each row
  std::vector<int> row_pos_;                  // [t] its position
  std::vector<int> logit_rows_;               // rows whose logits a call returns
  int score_stride_ = 0;                      // longest row's attention length this call
  std::vector<float> x_, h_, q_, k_, v_, o_, g_, u_, logits_, embed_row_;
  std::vector<float> scores_;                 // [threads, group, score_stride_] attention scratch
  std::vector<float> inv_freq_, rope_;        // rope_ [t, Dh/2, 2] (cos, sin) of each row
  QActs qa_;
  OpProfile* profile_ = nullptr;
};

// One sequence being generated: a KvCache and a Decoder of its own.
class Session {
 public:
  Session(const Model& model, int max_len, ThreadPool* pool, SessionOptions options = {});

  // Decoder::Forward on this session's cache.
  void Forward(const int* tokens, int t, float* last_logits, std::vector<float>* all_logits) {
    dec_.Forward(&cache_, tokens, t, last_logits, all_logits);
  }
  int pos() const { return cache_.length(); }
  int max_len() const { return cache_.max_len(); }
  int vocab() const { return dec_.model().config().vocab_size; }
  void Reset() { cache_.Truncate(0); }
  const SessionOptions& options() const { return dec_.options(); }
  // Bytes of KV cache one decode step at the current position reads.
  uint64_t KvBytesPerToken() const { return cache_.BytesPerToken(); }
  void set_profile(OpProfile* p) { dec_.set_profile(p); }

 private:
  KvCache cache_;
  Decoder dec_;
};

}  // namespace gemini::runtime

#endif  // GEMINI_CSRC_RUNTIME_MODEL_H_
