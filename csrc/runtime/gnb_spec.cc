// The tensors a config's dense decoder has: derived here once, from the config alone.
#include "csrc/runtime/gnb.h"

namespace gemini::runtime {

std::vector<TensorSpec> ExpectedTensors(const ModelConfig& c) {
  const uint64_t D = c.d_model, H = c.n_heads, K = c.n_kv_heads, Dh = c.head_dim, F = c.d_ff,
                 V = c.vocab_size;
  std::vector<TensorSpec> out;
  auto vec = [&](std::string name, uint64_t n) { out.push_back({std::move(name), false, {n}}); };
  auto mat = [&](std::string name, uint64_t n, uint64_t k) {
    out.push_back({std::move(name), true, {n, k}});
  };
  mat("embed", V, D);
  for (int i = 0; i < c.n_layers; ++i) {
    const std::string p = "layers." + std::to_string(i) + ".";
    vec(p + "attn_norm", D);
    if (c.qk_norm) {
      vec(p + "q_norm", Dh);
      vec(p + "k_norm", Dh);
    }
    mat(p + "wq", H * Dh, D);
    mat(p + "wk", K * Dh, D);
    mat(p + "wv", K * Dh, D);
    mat(p + "wo", D, H * Dh);
    vec(p + "mlp_norm", D);
    mat(p + "w_gate", F, D);
    mat(p + "w_up", F, D);
    mat(p + "w_down", D, F);
  }
  vec("final_norm", D);
  if (!c.tie_embeddings) mat("unembed", V, D);
  return out;
}

}  // namespace gemini::runtime
