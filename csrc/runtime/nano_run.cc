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

#include "csrc/runtime/generate.h"
#include "csrc/runtime/gnb.h"
#include "csrc/runtime/kernels.h"
#include "csrc/runtime/model.h"
#include "csrc/runtime/sampler.h"
#include "csrc/runtime/thread_pool.h"
#include "csrc/runtime/tokenizer.h"

using namespace gemini::runtime;

namespace {

const char kUsage[] =
    "usage: nano_run --model FILE.gnb (--prompt TEXT | --prompt_ids 1,2,3) [--max_tokens 64]\n"
    "       [--chat] [--temperature 0] [--top_k 0] [--top_p 1] [--seed 0] [--threads 1]\n"
    "       [--kernel auto|avx2|scalar] [--print_ids]\n";

struct Flags {
  std::map<std::string, std::string> values;
  bool Has(const std::string& k) const { return values.count(k) > 0; }
  std::string Get(const std::string& k, const std::string& d) const {
    auto it = values.find(k);
    return it == values.end() ? d : it->second;
  }
  long Int(const std::string& k, long d) const {
    if (!Has(k)) return d;
    char* end;
    long v = std::strtol(values.at(k).c_str(), &end, 10);
    if (*end != '\0') throw std::invalid_argument("--" + k + "=" + values.at(k) + " is not an integer");
    return v;
  }
  double Float(const std::string& k, double d) const {
    if (!Has(k)) return d;
    char* end;
    double v = std::strtod(values.at(k).c_str(), &end);
    if (*end != '\0') throw std::invalid_argument("--" + k + "=" + values.at(k) + " is not a number");
    return v;
  }
};

Flags Parse(int argc, char** argv) {
  static const std::map<std::string, bool> known = {
      {"model", true}, {"prompt", true}, {"prompt_ids", true}, {"max_tokens", true},
      {"temperature", true}, {"top_k", true}, {"top_p", true}, {"seed", true},
      {"threads", true}, {"kernel", true}, {"chat", false}, {"print_ids", false}};
  Flags f;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") { std::fputs(kUsage, stdout); std::exit(0); }
    if (a.rfind("--", 0) != 0) throw std::invalid_argument("unexpected argument '" + a + "'");
    a = a.substr(2);
    std::string value;
    size_t eq = a.find('=');
    if (eq != std::string::npos) { value = a.substr(eq + 1); a = a.substr(0, eq); }
    auto it = known.find(a);
    if (it == known.end()) throw std::invalid_argument("unknown flag --" + a);
    if (it->second && eq == std::string::npos) {
      if (i + 1 >= argc) throw std::invalid_argument("--" + a + " needs a value");
      value = argv[++i];
    }
    f.values[a] = it->second ? value : "1";
  }
  return f;
}

std::vector<int> ParseIds(const std::string& s) {
  std::vector<int> ids;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    char* end;
    long v = std::strtol(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0') throw std::invalid_argument("--prompt_ids: '" + item + "' is not an integer");
    ids.push_back(static_cast<int>(v));
  }
  return ids;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    Flags flags = Parse(argc, argv);
    if (!flags.Has("model") || (!flags.Has("prompt") && !flags.Has("prompt_ids"))) {
      std::fputs(kUsage, stderr);
      return 2;
    }
    const Kernels& kernels = SelectKernels(flags.Get("kernel", "auto"));
    std::shared_ptr<GnbFile> file = GnbFile::Open(flags.Get("model", ""));
    std::unique_ptr<Model> model = Model::FromFile(file, kernels);
    const ModelConfig& cfg = model->config();
    std::unique_ptr<Tokenizer> tok;
    if (file->tokenizer_kind() != kTokNone) tok = Tokenizer::Create(file->tokenizer_kind(), file->tokenizer_bytes(), file->path());
    std::vector<int> prompt;
    if (flags.Has("prompt_ids")) {
      prompt = ParseIds(flags.Get("prompt_ids", ""));
    } else {
      if (!tok) throw std::invalid_argument(file->path() + " has no tokenizer; use --prompt_ids");
      std::string text = flags.Get("prompt", "");
      if (flags.Has("chat")) {
        if (cfg.chat_template.empty()) throw std::invalid_argument(file->path() + ": --chat but the file has no chat_template");
        std::string t = cfg.chat_template;
        size_t at = t.find("{prompt}");
        text = at == std::string::npos ? t + text : t.substr(0, at) + text + t.substr(at + 8);
      }
      if (cfg.add_bos && cfg.bos_id >= 0) prompt.push_back(cfg.bos_id);
      std::vector<int> ids = tok->Encode(text);
      prompt.insert(prompt.end(), ids.begin(), ids.end());
    }
    long max_tokens = flags.Int("max_tokens", 64);
    if (max_tokens < 1) throw std::invalid_argument("--max_tokens must be >= 1");
    SamplingParams sp;
    sp.temperature = static_cast<float>(flags.Float("temperature", 0.0));
    sp.top_k = static_cast<int>(flags.Int("top_k", 0));
    sp.top_p = static_cast<float>(flags.Float("top_p", 1.0));
    sp.seed = static_cast<uint64_t>(flags.Int("seed", 0));
    Sampler sampler(sp);
    ThreadPool pool(static_cast<int>(flags.Int("threads", 1)));
    int max_len = static_cast<int>(prompt.size() + max_tokens);
    if (max_len > cfg.max_seq_len)
      throw std::invalid_argument("prompt + max_tokens = " + std::to_string(max_len) + " exceeds max_seq_len=" + std::to_string(cfg.max_seq_len));
    Session session(*model, max_len, &pool);
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
    std::fprintf(stderr, "[nano_run] %s: kernel=%s threads=%d prompt=%d tokens (%.1f tok/s) generated=%d tokens (%.1f tok/s)\n",
                 cfg.name.c_str(), kernels.name, pool.size(), st.prompt_tokens,
                 st.prompt_tokens / std::max(st.prefill_seconds, 1e-9), st.new_tokens,
                 st.new_tokens > 1 ? (st.new_tokens - 1) / std::max(st.decode_seconds, 1e-9) : 0.0);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "nano_run: error: %s\n", e.what());
    return 1;
  }
}
