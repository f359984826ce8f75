#include "csrc/runtime/generate.h"

#include <chrono>
#include <stdexcept>

namespace gemini::runtime {

std::vector<int> Generate(Session* session, const std::vector<int>& prompt, int max_tokens,
                          Sampler* sampler, int eos_id, GenerateStats* stats,
                          const std::function<void(int)>& on_token) {
  if (prompt.empty()) throw std::invalid_argument("the prompt has no tokens");
  using Clock = std::chrono::steady_clock;
  std::vector<int> out;
  std::vector<float> last(session->vocab());
  const int v = session->vocab();
  auto t0 = Clock::now();
  session->Forward(prompt.data(), static_cast<int>(prompt.size()), last.data(), nullptr);
  auto t1 = Clock::now();
  for (int i = 0; i < max_tokens; ++i) {
    int tok = sampler->Sample(last.data(), v);
    out.push_back(tok);
    if (on_token) on_token(tok);
    if ((eos_id >= 0 && tok == eos_id) || i + 1 == max_tokens) break;
    session->Forward(&tok, 1, last.data(), nullptr);
  }
  auto t2 = Clock::now();
  if (stats != nullptr) {
    stats->prompt_tokens = static_cast<int>(prompt.size());
    stats->new_tokens = static_cast<int>(out.size());
    stats->prefill_seconds = std::chrono::duration<double>(t1 - t0).count();
    stats->decode_seconds = std::chrono::duration<double>(t2 - t1).count();
  }
  return out;
}

}  // namespace gemini::runtime
