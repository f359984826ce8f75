// Prompt -> tokens: prefill, then sample one token at a time until max_tokens or EOS.
#ifndef GEMINI_CSRC_RUNTIME_GENERATE_H_
#define GEMINI_CSRC_RUNTIME_GENERATE_H_

#include <functional>
#include <vector>

#include "csrc/runtime/model.h"
#include "csrc/runtime/sampler.h"

namespace gemini::runtime {

struct GenerateStats {
  int prompt_tokens = 0, new_tokens = 0;
  double prefill_seconds = 0, decode_seconds = 0;
};

// Generates up to max_tokens ids after `prompt` (stops after eos_id if >= 0). on_token is
// called with each new id as soon as it is sampled (may be empty).
std::vector<int> Generate(Session* session, const std::vector<int>& prompt, int max_tokens,
                          Sampler* sampler, int eos_id, GenerateStats* stats,
                          const std::function<void(int)>& on_token = {});

}  // namespace gemini::runtime

#endif  // GEMINI_CSRC_RUNTIME_GENERATE_H_
