// RFC 3720 (iSCSI) Appendix B.4 CRC-32C test vectors, plus hardware == portable on
// random lengths/alignments and the extend property. Prints the plain "N passed, N failed".
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "csrc/common/crc32c.h"

namespace {
int passed = 0, failed = 0;
void Expect(bool ok, const char* what, unsigned long a, unsigned long b) {
  if (ok) { ++passed; return; }
  ++failed;
  std::printf("FAIL %s: got %08lx want %08lx\n", what, a, b);
}
}  // namespace

int main() {
  std::vector<unsigned char> buf(32);
  struct { const char* name; int fill; uint32_t want; } fills[] = {
      {"32 zeros", 0x00, 0x8A9136AAu}, {"32 0xFF", 0xFF, 0x62A8AB43u}};
  for (auto& f : fills) {
    std::memset(buf.data(), f.fill, 32);
    Expect(gemini::Crc32c(buf.data(), 32) == f.want, f.name, gemini::Crc32c(buf.data(), 32), f.want);
    Expect(gemini::Crc32cPortable(buf.data(), 32) == f.want, f.name, 0, f.want);
  }
  for (int i = 0; i < 32; ++i) buf[i] = static_cast<unsigned char>(i);
  Expect(gemini::Crc32c(buf.data(), 32) == 0x46DD794Eu, "incrementing", gemini::Crc32c(buf.data(), 32), 0x46DD794Eu);
  for (int i = 0; i < 32; ++i) buf[i] = static_cast<unsigned char>(31 - i);
  Expect(gemini::Crc32c(buf.data(), 32) == 0x113FDB5Cu, "decrementing", gemini::Crc32c(buf.data(), 32), 0x113FDB5Cu);
  Expect(gemini::Crc32c("123456789", 9) == 0xE3069283u, "check string", gemini::Crc32c("123456789", 9), 0xE3069283u);

  std::mt19937 rng(7);
  std::vector<unsigned char> data(4096 + 16);
  for (auto& b : data) b = static_cast<unsigned char>(rng());
  bool all_equal = true, extend_ok = true;
  for (int trial = 0; trial < 500; ++trial) {
    size_t off = rng() % 16, n = rng() % 4096, cut = n ? rng() % n : 0;
    const unsigned char* p = data.data() + off;
    uint32_t hw = gemini::Crc32c(p, n), sw = gemini::Crc32cPortable(p, n);
    all_equal &= hw == sw;
    extend_ok &= gemini::Crc32c(p + cut, n - cut, gemini::Crc32c(p, cut)) == hw;
  }
  Expect(all_equal, "fast == portable on 500 random slices", 0, 0);
  Expect(extend_ok, "extend property", 0, 0);
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
