// parity_main: logits and greedy tokens of a .gnb model from token ids, as one JSON line, with
// no tokenizer (so it builds for targets without libsentencepiece: the aarch64 cross build the
// qemu test runs).
//   parity_main MODEL.gnb 1,2,3 N_GREEDY [--kernel=auto] [--acts=int8|f32] [--kv=f16|f32]
#include <algorithm>
#include <cstdio>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "csrc/runtime/generate.h"
#include "csrc/runtime/gnb.h"
#include "csrc/runtime/kernels.h"
#include "csrc/runtime/model.h"
#include "csrc/runtime/sampler.h"
#include "csrc/runtime/thread_pool.h"

using namespace gemini::runtime;

int main(int argc, char** argv) {
  try {
    if (argc < 4) {
      std::fputs("usage: parity_main MODEL.gnb IDS N_GREEDY [--kernel=K] [--acts=int8|f32] [--kv=f16|f32] [--threads=N]\n", stderr);
      return 2;
    }
    std::vector<int> ids;
    std::stringstream ss(argv[2]);
    for (std::string item; std::getline(ss, item, ',');) ids.push_back(std::stoi(item));
    const int n_greedy = std::stoi(argv[3]);
    std::string kernel = "auto";
    SessionOptions so;
    int threads = 1;
    for (int i = 4; i < argc; ++i) {
      std::string a = argv[i];
      if (a.rfind("--kernel=", 0) == 0) kernel = a.substr(9);
      else if (a == "--acts=f32") so.int8_activations = false;
      else if (a == "--acts=int8") so.int8_activations = true;
      else if (a == "--kv=f32") so.kv_f16 = false;
      else if (a == "--kv=f16") so.kv_f16 = true;
      else if (a.rfind("--threads=", 0) == 0) threads = std::stoi(a.substr(10));
      else throw std::invalid_argument("unknown argument " + a);
    }
    const Kernels& kernels = SelectKernels(kernel);
    std::shared_ptr<GnbFile> file = GnbFile::Open(argv[1]);
    std::unique_ptr<Model> model = Model::FromFile(file, kernels);
    ThreadPool pool(threads);
    std::vector<float> all;
    {
      Session s(*model, static_cast<int>(ids.size()), &pool, so);
      s.Forward(ids.data(), static_cast<int>(ids.size()), nullptr, &all);
    }
    Sampler greedy(SamplingParams{0.f, 0, 1.f, 0});
    Session s(*model, static_cast<int>(ids.size()) + n_greedy, &pool, so);
    std::vector<int> out = Generate(&s, ids, n_greedy, &greedy, -1, nullptr);
    std::printf("{\"kernel\": \"%s\", \"cpu\": \"%s\", \"tokens\": [", kernels.name, CpuDescription().c_str());
    for (size_t i = 0; i < out.size(); ++i) std::printf("%s%d", i ? ", " : "", out[i]);
    std::printf("], \"logits\": [");
    for (size_t i = 0; i < all.size(); ++i) std::printf("%s%.8g", i ? ", " : "", all[i]);
    std::printf("]}\n");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "parity_main: error: %s\n", e.what());
    return 1;
  }
}
