// C++ encoder of `.gshd` shards: the independent second implementation of the format that
// the Python writer is compared against byte for byte (and what C++ tools would use).
#ifndef GEMINI_CSRC_LOADER_ENCODE_H_
#define GEMINI_CSRC_LOADER_ENCODE_H_

#include <cstdint>
#include <string>
#include <vector>

namespace gemini::loader {

struct MediaIn {
  uint32_t modality, dtype, placement, num_placeholders;
  std::vector<uint32_t> shape;  // 1..4 dims
  std::string bytes;            // Raw payload (little-endian elements or encoded bytes).
};

struct DocIn {
  std::vector<uint32_t> tokens;
  bool multimodal = false;
  std::vector<MediaIn> media;
};

// Returns the whole file; throws std::invalid_argument on a token >= vocab_size (when nonzero).
std::string EncodeShard(const std::vector<DocIn>& docs, uint32_t vocab_size);

}  // namespace gemini::loader

#endif  // GEMINI_CSRC_LOADER_ENCODE_H_
