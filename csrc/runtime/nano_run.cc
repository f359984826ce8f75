// nano_run: generate text with an int4 .gnb model on the CPU.
//   nano_run --model nano.gnb --prompt "..." --max_tokens N [--chat] [--temperature T]
//            [--top_k K] [--top_p P] [--seed S] [--threads N] [--kernel auto|avx2|scalar]
//            [--prompt_ids 1,2,3] [--print_ids]
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <string>

#include "csrc/runtime/cli_flags.h"
#include "csrc/runtime/generate.h"
#include "csrc/runtime/gguf_model.h"
#include "csrc/runtime/gnb.h"
#include "csrc/runtime/kernels.h"
#include "csrc/runtime/model.h"
#include "csrc/runtime/sampler.h"
#include "csrc/runtime/thread_pool.h"
#include "csrc/runtime/tokenizer.h"

using namespace gemini::runtime;

namespace {

const char kUsage[] =
    "usage: nano_run --model FILE.gnb|FILE.gguf (--prompt TEXT | --prompt_ids 1,2,3) [--max_tokens 64]\n"
    "       [--chat] [--temperature 0] [--top_k 0] [--top_p 1] [--seed 0] [--threads 1]\n"
    "       [--kernel auto|scalar|avx2|avxvnni|avx512|neon] [--acts int8|f32] [--kv f16|f32]\n"
    "       [--print_ids]\n";

// Flag name -> takes a value.
const std::map<std::string, bool> kKnownFlags = {
    {"model", true},  {"prompt", true}, {"prompt_ids", true}, {"max_tokens", true},
    {"temperature", true}, {"top_k", true}, {"top_p", true}, {"seed", true},
    {"threads", true}, {"kernel", true}, {"acts", true}, {"kv", true}, {"chat", false},
    {"print_ids", false}};

constexpr int64_t kIntMax = 2147483647;
constexpr int64_t kMaxThreads = 256;  // ThreadPool's own bound

}  // namespace

int main(int argc, char** argv) {
  try {
    Flags flags = Flags::Parse(argc, argv, kKnownFlags);
    if (flags.help()) {
      std::fputs(kUsage, stdout);
      return 0;
    }
    // Every number is range-checked before the model loads (ids once the vocabulary is known).
    const int64_t max_tokens = flags.Int("max_tokens", 64, 1, kIntMax);
    SamplingParams sp;
    sp.temperature = static_cast<float>(flags.Float("temperature", 0.0, 0.0, 1e6));
    sp.top_k = static_cast<int>(flags.Int("top_k", 0, 0, kIntMax));
    sp.top_p = static_cast<float>(flags.Float("top_p", 1.0, 0.0, 1.0, /*lo_open=*/true));
    sp.seed = flags.Uint64("seed", 0);
    const int threads = static_cast<int>(flags.Int("threads", 1, 1, kMaxThreads));
    if (!flags.Has("model") || (!flags.Has("prompt") && !flags.Has("prompt_ids"))) {
      std::fputs(kUsage, stderr);
      return 2;
    }
    const Kernels& kernels = SelectKernels(flags.Get("kernel", "auto"));
    LoadedModel loaded = OpenModelFile(flags.Get("model", ""), kernels);  // .gnb or GGUF
    std::unique_ptr<Model>& model = loaded.model;
    const ModelConfig& cfg = model->config();
    std::unique_ptr<Tokenizer> tok = std::move(loaded.tokenizer);
    std::vector<int> prompt;
    if (flags.Has("prompt_ids")) {
      for (int64_t id : flags.IntList("prompt_ids", 0, cfg.vocab_size - 1))
        prompt.push_back(static_cast<int>(id));
    } else {
      if (!tok) throw std::invalid_argument(loaded.no_tokenizer + "; use --prompt_ids");
      std::string text = flags.Get("prompt", "");
      if (flags.Has("chat")) {
        if (cfg.chat_template.empty()) throw std::invalid_argument(loaded.path + ": --chat but the file has no chat_template");
        std::string t = cfg.chat_template;
        size_t at = t.find("{prompt}");
        text = at == std::string::npos ? t + text : t.substr(0, at) + text + t.substr(at + 8);
      }
      if (cfg.add_bos && cfg.bos_id >= 0) prompt.push_back(cfg.bos_id);
      std::vector<int> ids = tok->Encode(text);
      prompt.insert(prompt.end(), ids.begin(), ids.end());
    }
    if (prompt.empty()) throw std::invalid_argument("the prompt is empty (no token ids)");
    Sampler sampler(sp);
    ThreadPool pool(threads);
    const int64_t total = static_cast<int64_t>(prompt.size()) + max_tokens;
    if (total > cfg.max_seq_len)
      throw std::invalid_argument("prompt (" + std::to_string(prompt.size()) + " tokens) + --max_tokens=" +
                                  std::to_string(max_tokens) + " = " + std::to_string(total) +
                                  " exceeds max_seq_len=" + std::to_string(cfg.max_seq_len));
    const int max_len = static_cast<int>(total);
    SessionOptions so;  // int8 activations and an f16 KV cache unless asked for the f32 paths
    const std::string acts = flags.Get("acts", "int8"), kv = flags.Get("kv", "f16");
    if (acts != "int8" && acts != "f32") throw std::invalid_argument("--acts=" + acts + ": expected int8|f32");
    if (kv != "f16" && kv != "f32") throw std::invalid_argument("--kv=" + kv + ": expected f16|f32");
    so.int8_activations = acts == "int8";
    so.kv_f16 = kv == "f16";
    Session session(*model, max_len, &pool, so);
    bool print_ids = flags.Has("print_ids");
    GenerateStats st;
    std::vector<int> out = Generate(&session, prompt, static_cast<int>(max_tokens), &sampler, cfg.eos_id, &st,
                                    [&](int id) {
                                      if (!print_ids && tok && id != cfg.eos_id) {
                                        std::cout << tok->Decode({id}) << std::flush;
                                      }
                                    });
    if (print_ids || !tok) {
      std::cout << "prompt_ids:";
      for (int id : prompt) std::cout << ' ' << id;
      std::cout << "\noutput_ids:";
      for (int id : out) std::cout << ' ' << id;
      std::cout << "\n";
      if (tok) std::cout << "text: " << tok->Decode(out) << "\n";
    } else {
      std::cout << std::endl;
    }
    std::fprintf(stderr, "[nano_run] %s: kernel=%s acts=%s kv=%s threads=%d prompt=%d tokens (%.1f tok/s) generated=%d tokens (%.1f tok/s)\n",
                 cfg.name.c_str(), kernels.name, acts.c_str(), kv.c_str(), pool.size(), st.prompt_tokens,
                 st.prompt_tokens / std::max(st.prefill_seconds, 1e-9), st.new_tokens,
                 st.new_tokens > 1 ? (st.new_tokens - 1) / std::max(st.decode_seconds, 1e-9) : 0.0);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "nano_run: error: %s\n", e.what());
    return 1;
  }
}
