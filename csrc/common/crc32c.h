// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of every binary
// format in this repo (data shards, .gnb exports). Matches RFC 3720 Appendix B.4.
#ifndef GEMINI_CSRC_COMMON_CRC32C_H_
#define GEMINI_CSRC_COMMON_CRC32C_H_

#include <cstddef>
#include <cstdint>

namespace gemini {

// Returns the CRC-32C of data[0, n). Pass a previous result as `crc` to extend it over
// more bytes: Crc32c(b, nb, Crc32c(a, na)) == Crc32c(a ++ b).
uint32_t Crc32c(const void* data, size_t n, uint32_t crc = 0);

// The same through a portable table-driven loop (the reference the fast path is tested
// against, and the fallback on CPUs without SSE4.2).
uint32_t Crc32cPortable(const void* data, size_t n, uint32_t crc = 0);

// True when Crc32c uses the SSE4.2 crc32 instruction on this CPU.
bool Crc32cHardware();

}  // namespace gemini

#endif  // GEMINI_CSRC_COMMON_CRC32C_H_
