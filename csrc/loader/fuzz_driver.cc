// Seeded mutation fuzzing of the shard parser (the CI-short form of fuzz_target.cc):
// mutants of valid shards must parse or raise ShardError; any crash or other exception fails.
// Usage: fuzz_driver [iterations=20000] [seed=1].
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "csrc/common/crc32c.h"
#include "csrc/loader/encode.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

using gemini::loader::DocIn;

std::string Seed(std::mt19937_64& rng) {
  std::vector<DocIn> docs;
  for (int d = 0; d < 5; ++d) {
    DocIn doc;
    for (int j = 0, n = rng() % 30; j < n; ++j) doc.tokens.push_back(rng() % 1000);
    docs.push_back(doc);
  }
  DocIn mm;
  mm.multimodal = true;
  for (int j = 0; j < 12; ++j) mm.tokens.push_back(j);
  mm.media.push_back({1, 1, 2, 4, {2, 3, 1}, std::string(6, '\x7f')});
  mm.media.push_back({2, 2, 6, 3, {5}, std::string(10, '\x01')});
  mm.media.push_back({3, 4, 9, 2, {3}, "png"});
  docs.push_back(mm);
  return gemini::loader::EncodeShard(docs, 1000);
}

// Recomputes every CRC so a mutation reaches the structural checks behind them.
void Reseal(std::string* d) {
  if (d->size() < 64) return;
  uint64_t n, idx;
  std::memcpy(&n, d->data() + 16, 8);
  std::memcpy(&idx, d->data() + 24, 8);
  if (n < 1000 && idx <= d->size() && n * 24 <= d->size() - idx) {
    for (uint64_t i = 0; i < n; ++i) {
      char* e = &(*d)[idx + 24 * i];
      uint64_t off, len;
      std::memcpy(&off, e, 8);
      std::memcpy(&len, e + 8, 8);
      if (off <= d->size() && len <= d->size() - off) {
        uint32_t c = gemini::Crc32c(d->data() + off, len);
        std::memcpy(e + 20, &c, 4);
      }
    }
    uint32_t c = gemini::Crc32c(d->data() + idx, n * 24);
    std::memcpy(&(*d)[44], &c, 4);
  }
  uint32_t c = gemini::Crc32c(d->data(), 60);
  std::memcpy(&(*d)[60], &c, 4);
}

}  // namespace

int main(int argc, char** argv) {
  const long iters = argc > 1 ? std::atol(argv[1]) : 20000;
  std::mt19937_64 rng(argc > 2 ? std::atol(argv[2]) : 1);
  const uint64_t extremes[] = {0, 1, 0x7fffffff, 0xffffffff, 1ull << 63, ~0ull};
  for (long it = 0; it < iters; ++it) {
    std::string d = Seed(rng);
    switch (it % 4) {
      case 0:
        for (int k = 0, n = 1 + rng() % 8; k < n; ++k) d[rng() % d.size()] ^= 1 + rng() % 255;
        break;
      case 1:
        d.resize(rng() % (d.size() + 16));
        break;
      case 2: {
        const size_t at = rng() % (d.size() - 8);
        std::memcpy(&d[at], &extremes[rng() % 6], 8);
        Reseal(&d);
        break;
      }
      default: {
        const size_t at = 16 + rng() % (d.size() - 20);
        const uint32_t v = static_cast<uint32_t>(rng());
        std::memcpy(&d[at], &v, 4);
        Reseal(&d);
      }
    }
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(d.data()), d.size());
  }
  std::printf("fuzz_driver: %ld mutants parsed or rejected cleanly\n", iters);
  return 0;
}
