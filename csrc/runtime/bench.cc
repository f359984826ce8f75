// bench_native: the runtime's side of //csrc/runtime:bench (bench.py drives it and llama.cpp,
// and prints the table). Measures prefill and decode tokens/s of models on each thread count,
// `--runs` times interleaved (run 1 of every configuration, then run 2, ...) so load changes on
// a shared machine hit all configurations alike, plus this machine's copy and read bandwidth. One JSON
// object per line on stdout; progress on stderr.
//
//   bench_native [--model=A.gnb,B.gguf] [--random=nano_tiny,smollm2_135m,nano1] [--threads=1,2]
//                [--runs=5] [--prompt_ids=1,2,3 | --prefill=64] [--decode=32] [--big_decode=8]
//                [--kernel=auto] [--acts=int8|f32] [--profile[=cpu]]
//
// --profile adds, per run, the milliseconds per token of each part of the forward (OpProfile;
// "quantize acts" is included in the matmul entries); --profile=cpu times the main thread's CPU
// time instead of wall time (1 thread on a loaded machine).
//
// --random models have the shapes of py/gemini/config.py's presets and random int4 weights
// generated in place (speed does not depend on the values; the 1.8B nano1 is never
// materialised in float). Models with d_model >= 2048 use --big_decode tokens and a 16-token
// prefill.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "csrc/runtime/gguf_model.h"
#include "csrc/runtime/kernels.h"
#include "csrc/runtime/model.h"
#include "csrc/runtime/thread_pool.h"

using namespace gemini::runtime;
using Clock = std::chrono::steady_clock;

namespace {

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) if (!item.empty()) out.push_back(item);
  return out;
}

ModelConfig Preset(const std::string& name) {
  // Mirrors py/gemini/config.py PRESETS (text decoder fields only).
  ModelConfig c;
  c.name = name;
  c.group_size = 32;
  c.max_seq_len = 2048;
  if (name == "nano_tiny") {
    c.vocab_size = 8192; c.d_model = 256; c.n_layers = 4; c.n_heads = 4; c.n_kv_heads = 1;
    c.head_dim = 64; c.d_ff = 1024; c.activation = "gelu";
  } else if (name == "smollm2_135m") {
    c.vocab_size = 49152; c.d_model = 576; c.n_layers = 30; c.n_heads = 9; c.n_kv_heads = 3;
    c.head_dim = 64; c.d_ff = 1536; c.activation = "silu"; c.rope_base = 100000.0; c.norm_eps = 1e-5;
  } else if (name == "nano1") {
    c.vocab_size = 256000; c.d_model = 2048; c.n_layers = 18; c.n_heads = 8; c.n_kv_heads = 1;
    c.head_dim = 256; c.d_ff = 10240; c.activation = "gelu";
  } else {
    throw std::invalid_argument("unknown preset " + name);
  }
  return c;
}

// Copy bandwidth (bytes read + written per second), best of `reps`, with `pool`'s threads.
double CopyBandwidth(size_t bytes, ThreadPool* pool, int reps) {
  std::vector<char> a(bytes, 1), b(bytes, 0);
  auto copy = [&] {
    pool->ParallelFor(static_cast<int>(bytes / 4096), [&](int r0, int r1) {
      std::memcpy(b.data() + static_cast<size_t>(r0) * 4096, a.data() + static_cast<size_t>(r0) * 4096,
                  static_cast<size_t>(r1 - r0) * 4096);
    }, 64);
  };
  copy();  // fault the pages in
  double best = 0;
  for (int r = 0; r < reps; ++r) {
    auto t0 = Clock::now();
    copy();
    best = std::max(best, 2.0 * bytes / Seconds(t0, Clock::now()));
  }
  if (b[bytes / 2] != 1) throw std::runtime_error("copy test failed");
  return best;
}

// Read bandwidth (bytes read per second): a sum over a buffer larger than the caches, best of
// `reps`, with `pool`'s threads (what a decode step does to its weights).
double ReadBandwidth(size_t bytes, ThreadPool* pool, int reps) {
  std::vector<uint64_t> a(bytes / 8);
  for (size_t i = 0; i < a.size(); ++i) a[i] = i;
  std::vector<uint64_t> sums(pool->size() * 8, 0);
  const int chunks = static_cast<int>(bytes / 4096);
  auto read = [&] {
    pool->ParallelFor(chunks, [&](int r0, int r1, int part) {
      const uint64_t* p = a.data() + static_cast<size_t>(r0) * 512;
      const size_t n = static_cast<size_t>(r1 - r0) * 512;
      uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (size_t i = 0; i < n; i += 4) { s0 += p[i]; s1 += p[i + 1]; s2 += p[i + 2]; s3 += p[i + 3]; }
      sums[part * 8] += s0 + s1 + s2 + s3;
    }, 64);
  };
  read();
  double best = 0;
  for (int r = 0; r < reps; ++r) {
    auto t0 = Clock::now();
    read();
    best = std::max(best, bytes / Seconds(t0, Clock::now()));
  }
  uint64_t total = 0;
  for (uint64_t v : sums) total += v;
  const uint64_t n = a.size();
  if (total != (n * (n - 1) / 2) * static_cast<uint64_t>(reps + 1)) throw std::runtime_error("read test failed");
  return best;
}

struct Entry {
  std::string label;
  std::unique_ptr<Model> model;
};

std::string ReadLoad() {
  std::ifstream f("/proc/loadavg");
  std::string a, b, c;
  f >> a >> b >> c;
  return a + " " + b + " " + c;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> files, randoms = {"smollm2_135m", "nano1"};
  std::vector<int> threads = {1, 2}, prompt;
  int runs = 5, prefill = 64, decode = 32, big_decode = 8;
  std::string kernel = "auto", acts = "int8";
  bool profile = false, cpu_clock = false;
  try {
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      auto val = [&](const char* k) { return a.substr(std::strlen(k)); };
      if (a.rfind("--model=", 0) == 0) files = Split(val("--model="));
      else if (a.rfind("--random=", 0) == 0) randoms = Split(val("--random="));
      else if (a.rfind("--threads=", 0) == 0) { threads.clear(); for (auto& s : Split(val("--threads="))) threads.push_back(std::stoi(s)); }
      else if (a.rfind("--runs=", 0) == 0) runs = std::stoi(val("--runs="));
      else if (a.rfind("--prefill=", 0) == 0) prefill = std::stoi(val("--prefill="));
      else if (a.rfind("--decode=", 0) == 0) decode = std::stoi(val("--decode="));
      else if (a.rfind("--big_decode=", 0) == 0) big_decode = std::stoi(val("--big_decode="));
      else if (a.rfind("--prompt_ids=", 0) == 0) { for (auto& s : Split(val("--prompt_ids="))) prompt.push_back(std::stoi(s)); }
      else if (a.rfind("--kernel=", 0) == 0) kernel = val("--kernel=");
      else if (a.rfind("--acts=", 0) == 0) acts = val("--acts=");
      else if (a == "--profile") profile = true;
      else if (a == "--profile=cpu") profile = cpu_clock = true;
      else throw std::invalid_argument("unknown argument " + a);
    }
    if (runs < 1 || prefill < 1 || decode < 1) throw std::invalid_argument("--runs, --prefill, --decode must be >= 1");
    const Kernels& kernels = SelectKernels(kernel);
    std::printf("{\"kind\": \"machine\", \"cpu\": \"%s\", \"kernel\": \"%s\", \"acts\": \"%s\", \"load\": \"%s\"}\n",
                CpuDescription().c_str(), kernels.name, acts.c_str(), ReadLoad().c_str());
    std::vector<std::unique_ptr<ThreadPool>> pools;
    for (int t : threads) pools.push_back(std::make_unique<ThreadPool>(t));
    for (size_t p = 0; p < pools.size(); ++p)
      std::printf("{\"kind\": \"bandwidth\", \"threads\": %d, \"bytes_per_s\": %.4g, \"read_bytes_per_s\": %.4g}\n",
                  threads[p], CopyBandwidth(256u << 20, pools[p].get(), 5), ReadBandwidth(512u << 20, pools[p].get(), 5));
    std::fflush(stdout);
    std::vector<Entry> models;
    for (const std::string& f : files) models.push_back({f, OpenModelFile(f, kernels).model});
    for (const std::string& r : randoms) models.push_back({r + " (random int4)", Model::Random(Preset(r), 1, kernels)});
    SessionOptions so;
    so.int8_activations = acts == "int8";
    const int total = runs * static_cast<int>(models.size() * pools.size());
    int done = 0;
    auto start = Clock::now();
    for (int run = 0; run < runs; ++run) {
      for (const Entry& e : models) {
        const ModelConfig& c = e.model->config();
        const bool big = c.d_model >= 2048;
        std::vector<int> ids = prompt;
        const int n_pre = big ? 16 : (ids.empty() ? prefill : static_cast<int>(ids.size()));
        if (ids.empty() || big) {
          ids.resize(n_pre);
          for (int i = 0; i < n_pre; ++i) ids[i] = (i * 7919 + 13) % c.vocab_size;
        }
        const int n_dec = big ? big_decode : decode;
        for (size_t p = 0; p < pools.size(); ++p) {
          Session s(*e.model, n_pre + n_dec + 1, pools[p].get(), so);
          std::vector<float> logits(c.vocab_size);
          s.Forward(ids.data(), 1, logits.data(), nullptr);  // warm-up: page in the weights
          s.Reset();
          OpProfile prof_prefill, prof_decode;
          prof_prefill.cpu_clock = prof_decode.cpu_clock = cpu_clock;
          if (profile) s.set_profile(&prof_prefill);
          auto t0 = Clock::now();
          s.Forward(ids.data(), n_pre, logits.data(), nullptr);
          auto t1 = Clock::now();
          if (profile) s.set_profile(&prof_decode);
          std::vector<int> out;
          uint64_t kv_mid = 0;
          for (int i = 0; i < n_dec; ++i) {
            int tok = static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin());
            out.push_back(tok);
            if (i == n_dec / 2) kv_mid = s.KvBytesPerToken();
            s.Forward(&tok, 1, logits.data(), nullptr);
          }
          auto t2 = Clock::now();
          if (profile) {
            for (auto [phase, prof, n] : {std::make_tuple("prefill", &prof_prefill, n_pre),
                                          std::make_tuple("decode", &prof_decode, n_dec)}) {
              std::string ops;
              for (int op = 0; op < OpProfile::kOps; ++op)
                ops += std::string(op ? ", " : "") + "\"" + OpProfile::Name(op) + "\": " +
                       std::to_string(1e3 * prof->seconds[op] / n);
              std::printf("{\"kind\": \"profile\", \"model\": \"%s\", \"threads\": %d, \"phase\": \"%s\", "
                          "\"ms_per_token\": {%s}}\n", e.label.c_str(), threads[p], phase, ops.c_str());
            }
          }
          std::string toks;
          for (int t : out) toks += (toks.empty() ? "" : ",") + std::to_string(t);
          std::printf("{\"kind\": \"run\", \"model\": \"%s\", \"threads\": %d, \"run\": %d, \"prefill_tokens\": %d, "
                      "\"decode_tokens\": %d, \"prefill_tps\": %.4g, \"decode_tps\": %.4g, \"bytes_per_token\": %llu, "
                      "\"tokens\": [%s], \"load\": \"%s\"}\n",
                      e.label.c_str(), threads[p], run, n_pre, n_dec, n_pre / Seconds(t0, t1), n_dec / Seconds(t1, t2),
                      static_cast<unsigned long long>(e.model->WeightBytesPerToken() + kv_mid), toks.c_str(),
                      ReadLoad().c_str());
          std::fflush(stdout);
          ++done;
          double el = Seconds(start, Clock::now());
          std::fprintf(stderr, "[bench_native] %d/%d %s x%d: prefill %.1f t/s, decode %.1f t/s (elapsed %.0f s, ETA %.0f s)\n",
                       done, total, e.label.c_str(), threads[p], n_pre / Seconds(t0, t1), n_dec / Seconds(t1, t2),
                       el, el / done * (total - done));
        }
      }
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_native: error: %s\n", e.what());
    return 1;
  }
}
