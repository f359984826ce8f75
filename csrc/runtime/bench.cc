// Runtime benchmark: prefill and decode tokens/s of int4 models on 1 and 2 threads, the
// bytes one decode step reads, this machine's memory bandwidth (a copy test in the same run)
// and the ratio of achieved to bandwidth-bound decode speed.
//
//   bazel run //csrc/runtime:bench [-- --quick] [--smollm2_gnb=smollm2.gnb] [--gnb=a.gnb,...]
//
// Models: nano_tiny, smollm2_135m and nano1 (~1.8B) with the shapes of the presets in
// py/gemini/config.py and random int4 weights generated in place (speed does not depend on
// the values; the 1.8B model is never materialised in float). --smollm2_gnb runs the real
// exported SmolLM2 file instead of its random twin; --gnb adds any exported files.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "csrc/runtime/gnb.h"
#include "csrc/runtime/kernels.h"
#include "csrc/runtime/model.h"
#include "csrc/runtime/thread_pool.h"

using namespace gemini::runtime;
using Clock = std::chrono::steady_clock;

namespace {

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
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

// Copy bandwidth (bytes read + written per second) with `threads` threads over `bytes`.
double CopyBandwidth(size_t bytes, int threads, int reps) {
  std::vector<char> a(bytes, 1), b(bytes, 0);
  ThreadPool pool(threads);
  auto copy = [&] {
    pool.ParallelFor(static_cast<int>(bytes / 4096), [&](int r0, int r1) {
      std::memcpy(b.data() + static_cast<size_t>(r0) * 4096, a.data() + static_cast<size_t>(r0) * 4096,
                  static_cast<size_t>(r1 - r0) * 4096);
    }, 64);
  };
  copy();  // fault the pages in
  double best = 0;
  for (int r = 0; r < reps; ++r) {
    auto t0 = Clock::now();
    copy();
    double s = Seconds(t0, Clock::now());
    best = std::max(best, 2.0 * bytes / s);
  }
  if (b[bytes / 2] != 1) std::fprintf(stderr, "copy test failed\n");
  return best;
}

struct Result {
  double prefill_tps, decode_tps;
  uint64_t bytes_per_token;
};

Result Run(const Model& model, int threads, int prefill, int decode) {
  ThreadPool pool(threads);
  const ModelConfig& c = model.config();
  std::vector<int> prompt(prefill);
  for (int i = 0; i < prefill; ++i) prompt[i] = (i * 7919 + 13) % c.vocab_size;
  Session s(model, prefill + decode + 1, &pool);
  std::vector<float> logits(c.vocab_size);
  s.Forward(prompt.data(), 1, logits.data(), nullptr);  // warm-up: page in the weights
  s.Reset();
  auto t0 = Clock::now();
  s.Forward(prompt.data(), prefill, logits.data(), nullptr);
  auto t1 = Clock::now();
  uint64_t kv_mid = 0;
  int tok = 1;
  for (int i = 0; i < decode; ++i) {
    if (i == decode / 2) kv_mid = s.KvBytesPerToken();
    s.Forward(&tok, 1, logits.data(), nullptr);
    tok = static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  }
  auto t2 = Clock::now();
  return {prefill / Seconds(t0, t1), decode / Seconds(t1, t2), model.WeightBytesPerToken() + kv_mid};
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  std::string smollm2_gnb;
  std::vector<std::string> files;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--quick") quick = true;
    else if (a.rfind("--smollm2_gnb=", 0) == 0) smollm2_gnb = a.substr(14);
    else if (a.rfind("--gnb=", 0) == 0) {
      std::stringstream ss(a.substr(6));
      std::string f;
      while (std::getline(ss, f, ',')) if (!f.empty()) files.push_back(f);
    } else {
      std::fprintf(stderr, "usage: bench [--quick] [--smollm2_gnb=FILE] [--gnb=A.gnb,B.gnb]\n");
      return 2;
    }
  }
  try {
    const Kernels& kernels = SelectKernels("auto");
    std::printf("int4 runtime bench (%s): kernel=%s, group 32, f16 scales, f32 activations/KV\n",
                quick ? "quick" : "full", kernels.name);
    size_t copy_bytes = quick ? (64u << 20) : (256u << 20);
    double bw1 = CopyBandwidth(copy_bytes, 1, quick ? 3 : 5);
    double bw2 = CopyBandwidth(copy_bytes, 2, quick ? 3 : 5);
    std::printf("memory bandwidth (memcpy of %zu MiB, read+write): 1 thread %.2f GB/s, 2 threads %.2f GB/s\n\n",
                copy_bytes >> 20, bw1 / 1e9, bw2 / 1e9);
    struct Entry { std::string label; std::unique_ptr<Model> model; std::shared_ptr<GnbFile> file; };
    std::vector<Entry> models;
    auto add_random = [&](const std::string& preset) {
      models.push_back({preset + " (random int4)", Model::Random(Preset(preset), 1, kernels), nullptr});
    };
    add_random("nano_tiny");
    if (!smollm2_gnb.empty()) files.insert(files.begin(), smollm2_gnb);
    else add_random("smollm2_135m");
    for (const std::string& f : files) {
      std::shared_ptr<GnbFile> file = GnbFile::Open(f);
      models.push_back({file->config().name + " (" + f + ")", Model::FromFile(file, kernels), file});
    }
    add_random("nano1");
    std::printf("%-44s %3s %12s %12s %12s %12s %8s\n", "model", "thr", "prefill t/s", "decode t/s",
                "MB/token", "bound t/s", "ratio");
    for (const Entry& e : models) {
      bool big = e.model->config().d_model >= 2048;
      int prefill = quick ? (big ? 4 : 16) : (big ? 32 : 64);
      int decode = quick ? (big ? 3 : 8) : (big ? 8 : 32);
      for (int threads : {1, 2}) {
        Result r = Run(*e.model, threads, prefill, decode);
        double bw = threads == 1 ? bw1 : bw2;
        // Decode must stream every weight byte once per token: bandwidth / bytes is its ceiling
        // (copy bandwidth counts read+write, a fair proxy for pure streaming reads).
        double bound = bw / static_cast<double>(r.bytes_per_token);
        std::printf("%-44s %3d %12.1f %12.2f %12.1f %12.2f %8.2f\n", e.label.c_str(), threads,
                    r.prefill_tps, r.decode_tps, r.bytes_per_token / 1e6, bound, r.decode_tps / bound);
        std::fflush(stdout);
      }
    }
    std::printf("\nratio = achieved decode tokens/s / (copy bandwidth / bytes read per token)\n");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench: error: %s\n", e.what());
    return 1;
  }
}
