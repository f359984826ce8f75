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
  ModelConfig config_;
  const Kernels* kernels_ = nullptr;
  std::shared_ptr<GnbFile> file_;
  std::vector<uint8_t> owned_;          // Random()/FromParts(): packed data + scales
  std::vector<float> owned_norms_;
  std::vector<LayerWeights> layers_;
  QMatrix embed_, unembed_;
  const float* final_norm_ = nullptr;
};

struct SessionOptions {
  bool int8_activations = true;  // false: the f32-activation kernels (accuracy reference)
  bool kv_f16 = true;            // false: f32 KV cache (parity tests)
};

// One sequence being generated: the KV cache and scratch buffers. After the first Forward of
// a given length nothing is allocated per token.
class Session {
 public:
  Session(const Model& model, int max_len, ThreadPool* pool, SessionOptions options = {});

  // Runs tokens[0, t) at positions pos()..pos()+t-1, appending to the cache. Writes the last
  // token's logits [V] to `last_logits` (if not null) and all t rows [t, V] to `all_logits`
  // (if not null). Throws std::out_of_range past max_len or for a token outside the vocab.
  void Forward(const int* tokens, int t, float* last_logits, std::vector<float>* all_logits);
  int pos() const { return pos_; }
  int max_len() const { return max_len_; }
  int vocab() const { return c_.vocab_size; }
  void Reset() { pos_ = 0; }
  const SessionOptions& options() const { return opt_; }
  // Bytes of KV cache one decode step at the current position reads.
  uint64_t KvBytesPerToken() const;

 private:
  // y = x W^T over t rows. With int8 activations x is quantised once (QuantizeActs) unless
  // `reuse` says the previous call had the same input (q/k/v and gate/up share theirs).
  void MatMul(const QMatrix& w, const float* x, int t, int ldx, float* y, int ldy, bool reuse = false);
  void Attention(int layer, int t);
  void StoreKv(int layer, int i);

  const Model& m_;
  const ModelConfig& c_;
  ThreadPool* pool_;
  SessionOptions opt_;
  int max_len_, pos_ = 0;
  int ld_;                                    // scratch row stride (>= every padded K)
  std::vector<float> k_cache_, v_cache_;      // [L, max_len, K*Dh] (f32 cache)
  std::vector<uint16_t> k16_, v16_;           // [L, max_len, K*Dh] (f16 cache)
  std::vector<float> x_, h_, q_, k_, v_, o_, g_, u_, logits_;
  std::vector<float> scores_;                 // [threads, max_len] attention scratch
  std::vector<float> inv_freq_, rope_;
  QActs qa_;
};

}  // namespace gemini::runtime

#endif  // GEMINI_CSRC_RUNTIME_MODEL_H_
