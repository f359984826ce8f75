// Next-token sampling: greedy (temperature 0), or temperature + top-k + top-p with a seed.
#ifndef GEMINI_CSRC_RUNTIME_SAMPLER_H_
#define GEMINI_CSRC_RUNTIME_SAMPLER_H_

#include <cstdint>
#include <random>
#include <vector>

namespace gemini::runtime {

struct SamplingParams {
  float temperature = 0.f;  // 0 = greedy (argmax, first index on ties)
  int top_k = 0;            // 0 = all tokens
  float top_p = 1.f;        // nucleus: smallest set of top tokens with probability >= top_p
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& p);
  int Sample(const float* logits, int vocab);
  // The distribution Sample draws from (after temperature, top-k, top-p), for tests.
  std::vector<float> Probabilities(const float* logits, int vocab) const;

 private:
  SamplingParams p_;
  std::mt19937_64 rng_;
};

int Argmax(const float* x, int n);

}  // namespace gemini::runtime

#endif  // GEMINI_CSRC_RUNTIME_SAMPLER_H_
