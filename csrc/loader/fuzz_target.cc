// libFuzzer entry point over the shard parser (header, index, records, media descriptors).
// With clang: clang++ -fsanitize=fuzzer,address fuzz_target.cc shard.cc crc32c.cc.
// Without it, fuzz_driver.cc runs a seeded mutation loop through the same function (CI form).
#include <cstddef>
#include <cstdint>
#include <string>

#include "csrc/loader/shard.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using gemini::loader::Shard;
  try {
    auto s = Shard::FromBytes(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
    // A shard that parsed must be fully readable: touch every token and media byte.
    uint64_t sum = 0;
    for (uint64_t i = 0; i < s->num_records(); ++i) {
      const auto& t = s->tokens(i);
      for (uint64_t j = 0; j < t.count; ++j) sum += t.At(j);
      for (const auto& m : s->media(i))
        for (uint64_t j = 0; j < m.length; ++j) sum += m.data[j];
    }
    return static_cast<int>(sum & 0);
  } catch (const gemini::loader::ShardError&) {
    return 0;
  }
}
