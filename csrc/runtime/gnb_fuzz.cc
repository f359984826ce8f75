// Seeded mutation fuzzing of the .gnb reader with every CRC recomputed after each mutation
// (so the checks behind the checksums are what is exercised). A seed file is written here
// from ExpectedTensors(config); each mutant must be refused with a FormatError naming the
// file, or load to a config that passes ValidateConfig and run a forward pass. Any other
// exception, crash or sanitizer report fails. Usage: gnb_fuzz [iterations=3000] [seed=1].
// Under AddressSanitizer/UBSan (README.md): bazel test --copt=-fsanitize=address,undefined
//   --linkopt=-fsanitize=address,undefined //csrc/runtime:gnb_fuzz_test
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "csrc/common/crc32c.h"
#include "csrc/runtime/gnb.h"
#include "csrc/runtime/kernels.h"
#include "csrc/runtime/model.h"
#include "csrc/runtime/thread_pool.h"

namespace {

using namespace gemini::runtime;

const char kConfig[] =
    "{\"name\": \"fuzz\", \"vocab_size\": 40, \"d_model\": 32, \"n_layers\": 2, \"n_heads\": 2, "
    "\"n_kv_heads\": 1, \"head_dim\": 16, \"d_ff\": 48, \"max_seq_len\": 32, \"rope_base\": 10000.0, "
    "\"norm_eps\": 1e-06, \"logit_softcap\": 30.0, \"tie_embeddings\": false, \"activation\": \"silu\", "
    "\"group_size\": 32, \"bos_id\": 1, \"eos_id\": 2, \"add_bos\": true, \"chat_template\": \"\", "
    "\"qk_norm\": true}";

template <typename T>
void Put(std::string* s, T v) {
  s->append(reinterpret_cast<const char*>(&v), sizeof(T));
}

// Byte-level BPE blob: 38 single letters/digits, then "ab" and "abc" made by two merges.
std::string BpeBlob() {
  std::string b;
  const std::string chars = "abcdefghijklmnopqrstuvwxyz0123456789XY";
  Put<uint32_t>(&b, static_cast<uint32_t>(chars.size() + 2));
  for (char c : chars) {
    Put<uint16_t>(&b, 1);
    b.push_back(c);
  }
  for (const std::string t : {"ab", "abc"}) {
    Put<uint16_t>(&b, static_cast<uint16_t>(t.size()));
    b += t;
  }
  Put<uint32_t>(&b, 2);
  for (uint32_t v : {0u, 1u, 38u, 2u}) Put<uint32_t>(&b, v);
  Put<uint32_t>(&b, 0);  // specials
  Put<uint32_t>(&b, 0);  // flags
  Put<uint32_t>(&b, 1);
  Put<uint32_t>(&b, 97);
  Put<uint32_t>(&b, 122);
  Put<uint32_t>(&b, 1);
  Put<uint32_t>(&b, 48);
  Put<uint32_t>(&b, 57);
  return b;
}

// A valid file: FORMAT.md's layout, tensors from the config's spec, every CRC computed.
std::string Seed(std::mt19937_64& rng) {
  const ModelConfig cfg = ParseConfigJson(kConfig, "seed");
  const std::string tok = BpeBlob();
  std::vector<std::string> data;
  std::string table;
  const std::vector<TensorSpec> spec = ExpectedTensors(cfg);
  for (const TensorSpec& t : spec) {
    std::string d;
    if (t.int4) {
      const uint64_t n = t.shape[0], kp = (t.shape[1] + 31) / 32 * 32;
      for (uint64_t i = 0; i < n * kp / 2; ++i) d.push_back(static_cast<char>(rng()));
      for (uint64_t i = 0; i < n * kp / 32; ++i) Put<uint16_t>(&d, 0x2000);  // f16 0.0078
    } else {
      for (uint64_t i = 0; i < t.shape[0]; ++i) Put<float>(&d, 1.0f);
    }
    data.push_back(d);
  }
  uint64_t table_len = 0;
  for (const TensorSpec& t : spec) table_len += 28 + t.name.size() + 8 * t.shape.size();
  const uint64_t header = 48 + sizeof(kConfig) - 1 + tok.size() + table_len + 4;
  uint64_t pos = (header + 63) / 64 * 64;
  std::vector<uint64_t> offsets;
  for (const std::string& d : data) {
    offsets.push_back(pos);
    pos = (pos + d.size() + 63) / 64 * 64;
  }
  const uint64_t file_bytes = offsets.back() + data.back().size();
  std::string f = "GEMINANO";
  Put<uint32_t>(&f, 1);
  Put<uint32_t>(&f, static_cast<uint32_t>(header));
  Put<uint64_t>(&f, file_bytes);
  Put<uint32_t>(&f, sizeof(kConfig) - 1);
  Put<uint32_t>(&f, kTokBpe);
  Put<uint64_t>(&f, tok.size());
  Put<uint32_t>(&f, static_cast<uint32_t>(spec.size()));
  Put<uint32_t>(&f, 0);
  f += kConfig;
  f += tok;
  for (size_t i = 0; i < spec.size(); ++i) {
    const TensorSpec& t = spec[i];
    Put<uint16_t>(&f, static_cast<uint16_t>(t.name.size()));
    f += t.name;
    Put<uint8_t>(&f, t.int4 ? kInt4F16 : kF32);
    Put<uint8_t>(&f, static_cast<uint8_t>(t.shape.size()));
    Put<uint32_t>(&f, t.int4 ? 32 : 0);
    for (uint64_t d : t.shape) Put<uint64_t>(&f, d);
    Put<uint64_t>(&f, offsets[i]);
    Put<uint64_t>(&f, data[i].size());
    Put<uint32_t>(&f, gemini::Crc32c(reinterpret_cast<const uint8_t*>(data[i].data()), data[i].size()));
  }
  Put<uint32_t>(&f, gemini::Crc32c(reinterpret_cast<const uint8_t*>(f.data()), f.size()));
  f.resize(file_bytes, '\0');
  for (size_t i = 0; i < data.size(); ++i) f.replace(offsets[i], data[i].size(), data[i]);
  return f;
}

template <typename T>
bool Get(const std::string& s, uint64_t at, T* v) {
  if (at > s.size() || s.size() - at < sizeof(T)) return false;
  std::memcpy(v, s.data() + at, sizeof(T));
  return true;
}

// Recomputes each in-bounds tensor CRC, then the header CRC (walks the table by hand).
void Reseal(std::string* f) {
  uint32_t hb, cfg, n;
  uint64_t tok;
  if (!Get(*f, 12, &hb) || hb < 52 || hb > f->size() || !Get(*f, 24, &cfg) || !Get(*f, 32, &tok) ||
      !Get(*f, 40, &n))
    return;
  uint64_t pos = 48 + static_cast<uint64_t>(cfg) + tok;
  for (uint32_t i = 0; i < n && i < 10000 && pos < hb; ++i) {
    uint16_t nlen;
    uint8_t ndim;
    if (!Get(*f, pos, &nlen) || !Get(*f, pos + 2 + nlen + 1, &ndim)) break;
    const uint64_t e = pos + 2 + nlen + 6 + 8ull * ndim;
    uint64_t off, nb;
    if (!Get(*f, e, &off) || !Get(*f, e + 8, &nb) || e + 20 > hb - 4) break;
    if (off <= f->size() && nb <= f->size() - off) {
      const uint32_t c = gemini::Crc32c(reinterpret_cast<const uint8_t*>(f->data()) + off, nb);
      std::memcpy(&(*f)[e + 16], &c, 4);
    }
    pos = e + 20;
  }
  const uint32_t c = gemini::Crc32c(reinterpret_cast<const uint8_t*>(f->data()), hb - 4);
  std::memcpy(&(*f)[hb - 4], &c, 4);
}

}  // namespace

int main(int argc, char** argv) {
  const long iters = argc > 1 ? std::atol(argv[1]) : 3000;
  std::mt19937_64 rng(argc > 2 ? std::atol(argv[2]) : 1);
  const std::string base = Seed(rng);
  uint32_t hb;
  std::memcpy(&hb, base.data() + 12, 4);
  const Kernels& kernels = SelectKernels("auto");
  ThreadPool pool(1);
  const uint64_t extremes[] = {0, 1, 0x7fffffff, 0x80000000, 0xffffffff, 1ull << 32, 1ull << 63, ~0ull};
  long refused = 0, ran = 0;
  for (long it = 0; it < iters; ++it) {
    std::string f = base;
    switch (it % 5) {
      case 0:  // config characters (digits, signs, quotes, braces)
        for (int k = 0, n = 1 + rng() % 3; k < n; ++k)
          f[48 + rng() % (sizeof(kConfig) - 1)] = "0123456789-+.eE\"{},: x\xff"[rng() % 23];
        break;
      case 1:  // any header byte
        for (int k = 0, n = 1 + rng() % 4; k < n; ++k) f[rng() % (hb - 4)] ^= 1 + rng() % 255;
        break;
      case 2: {  // an extreme 64-bit value anywhere in the tokenizer or table
        const uint64_t at = 48 + sizeof(kConfig) - 1 + rng() % (hb - 4 - 8 - 48 - sizeof(kConfig) + 1);
        std::memcpy(&f[at], &extremes[rng() % 8], 8);
        break;
      }
      case 3:  // truncated or extended
        f.resize(rng() % (f.size() + 128), '\0');
        break;
      default:  // weight bytes
        for (int k = 0; k < 16; ++k) f[hb + rng() % (f.size() - hb)] = static_cast<char>(rng());
    }
    Reseal(&f);
    std::shared_ptr<GnbFile> g;
    try {
      g = GnbFile::FromBytes(f, "fuzz.gnb");
    } catch (const FormatError& e) {
      if (std::strncmp(e.what(), "fuzz.gnb: ", 10) != 0) {
        std::printf("refusal without the file name: %s\n", e.what());
        return 1;
      }
      ++refused;
      continue;
    }
    ValidateConfig(g->config(), "accepted");  // throws (and fails the test) if out of range
    std::unique_ptr<Model> m = Model::FromFile(g, kernels);
    Session s(*m, 3, &pool);
    const int prompt[3] = {1, 2, 3};
    std::vector<float> logits(static_cast<size_t>(g->config().vocab_size));
    s.Forward(prompt, 3, logits.data(), nullptr);
    ++ran;
  }
  std::printf("gnb_fuzz: %ld mutants: %ld refused with a message, %ld loaded and ran\n", iters,
              refused, ran);
  return refused > iters / 4 && ran > iters / 10 ? 0 : 1;
}
