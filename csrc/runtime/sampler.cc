#include "csrc/runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>

namespace gemini::runtime {

int Argmax(const float* x, int n) {
  int best = 0;
  for (int i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return best;
}

Sampler::Sampler(const SamplingParams& p) : p_(p), rng_(p.seed) {
  if (!(p.temperature >= 0.f) || !std::isfinite(p.temperature))
    throw std::invalid_argument("--temperature=" + std::to_string(p.temperature) + " must be >= 0");
  if (p.top_k < 0) throw std::invalid_argument("--top_k=" + std::to_string(p.top_k) + " must be >= 0");
  if (!(p.top_p > 0.f && p.top_p <= 1.f))
    throw std::invalid_argument("--top_p=" + std::to_string(p.top_p) + " must be in (0, 1]");
}

std::vector<float> Sampler::Probabilities(const float* logits, int vocab) const {
  std::vector<float> prob(vocab, 0.f);
  if (p_.temperature == 0.f) {
    prob[Argmax(logits, vocab)] = 1.f;
    return prob;
  }
  std::vector<int> idx(vocab);
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return logits[a] > logits[b]; });
  int keep = p_.top_k > 0 ? std::min(p_.top_k, vocab) : vocab;
  double mx = logits[idx[0]] / p_.temperature, sum = 0.0;
  std::vector<double> e(keep);
  for (int i = 0; i < keep; ++i) {
    e[i] = std::exp(logits[idx[i]] / p_.temperature - mx);
    sum += e[i];
  }
  // Nucleus: keep the smallest prefix whose mass reaches top_p.
  double mass = 0.0;
  int n = 0;
  while (n < keep) {
    mass += e[n] / sum;
    ++n;
    if (mass >= p_.top_p) break;
  }
  double kept = 0.0;
  for (int i = 0; i < n; ++i) kept += e[i];
  for (int i = 0; i < n; ++i) prob[idx[i]] = static_cast<float>(e[i] / kept);
  return prob;
}

int Sampler::Sample(const float* logits, int vocab) {
  if (p_.temperature == 0.f) return Argmax(logits, vocab);
  std::vector<float> prob = Probabilities(logits, vocab);
  double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng_), acc = 0.0;
  int last = 0;
  for (int i = 0; i < vocab; ++i) {
    if (prob[i] <= 0.f) continue;
    acc += prob[i];
    last = i;
    if (u < acc) return i;
  }
  return last;
}

}  // namespace gemini::runtime
