#include "csrc/loader/encode.h"

#include <cstring>
#include <stdexcept>

#include "csrc/common/crc32c.h"
#include "csrc/loader/shard.h"

namespace gemini::loader {
namespace {

template <typename T>
void Put(std::string* out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out->append(b, sizeof(T));
}

void Pad8(std::string* out) { out->append((8 - out->size() % 8) % 8, '\0'); }

uint32_t Width(const std::vector<uint32_t>& t, uint32_t vocab) {
  uint64_t limit = vocab;
  if (vocab == 0) {
    limit = 0;
    for (uint32_t x : t) limit = std::max<uint64_t>(limit, uint64_t{x} + 1);
  }
  return limit <= 65536 ? 2 : 4;
}

void PutTokens(std::string* out, const std::vector<uint32_t>& t, uint32_t w) {
  for (uint32_t x : t) {
    if (w == 2) Put<uint16_t>(out, static_cast<uint16_t>(x));
    else Put<uint32_t>(out, x);
  }
}

}  // namespace

std::string EncodeShard(const std::vector<DocIn>& docs, uint32_t vocab) {
  std::string body, index;
  for (const DocIn& d : docs) {
    for (uint32_t x : d.tokens)
      if (vocab && x >= vocab)
        throw std::invalid_argument("encode: token " + std::to_string(x) + " >= vocab " +
                                    std::to_string(vocab));
    const uint32_t w = Width(d.tokens, vocab);
    std::string rec;
    uint32_t kind;
    if (!d.multimodal) {
      kind = w == 2 ? kTokensU16 : kTokensU32;
      PutTokens(&rec, d.tokens, w);
    } else {
      kind = kMultimodal;
      const uint64_t m = d.media.size();
      std::string toks;
      PutTokens(&toks, d.tokens, w);
      uint64_t off = 16 + kMediaDescSize * m + toks.size();
      off += (8 - off % 8) % 8;
      Put<uint32_t>(&rec, w);
      Put<uint32_t>(&rec, static_cast<uint32_t>(d.tokens.size()));
      Put<uint32_t>(&rec, static_cast<uint32_t>(m));
      Put<uint32_t>(&rec, 0);
      for (const MediaIn& mi : d.media) {
        if (mi.shape.empty() || mi.shape.size() > 4)
          throw std::invalid_argument("encode: media ndim must be 1..4");
        for (uint32_t v : {mi.modality, mi.dtype, mi.placement, mi.num_placeholders,
                           static_cast<uint32_t>(mi.shape.size())})
          Put<uint32_t>(&rec, v);
        for (size_t j = 0; j < 4; ++j) Put<uint32_t>(&rec, j < mi.shape.size() ? mi.shape[j] : 0);
        Put<uint32_t>(&rec, 0);
        Put<uint64_t>(&rec, off);
        Put<uint64_t>(&rec, mi.bytes.size());
        off += mi.bytes.size() + (8 - mi.bytes.size() % 8) % 8;
      }
      rec += toks;
      Pad8(&rec);
      for (const MediaIn& mi : d.media) {
        rec += mi.bytes;
        Pad8(&rec);
      }
    }
    Put<uint64_t>(&index, kHeaderSize + body.size());
    Put<uint64_t>(&index, rec.size());
    Put<uint32_t>(&index, kind);
    Put<uint32_t>(&index, Crc32c(rec.data(), rec.size()));
    body += rec;
    Pad8(&body);
  }
  std::string head(kMagic, 8);
  Put<uint32_t>(&head, kVersion);
  Put<uint32_t>(&head, kHeaderSize);
  Put<uint64_t>(&head, docs.size());
  Put<uint64_t>(&head, kHeaderSize + body.size());
  Put<uint64_t>(&head, kHeaderSize + body.size() + index.size());
  Put<uint32_t>(&head, vocab);
  Put<uint32_t>(&head, Crc32c(index.data(), index.size()));
  for (int i = 0; i < 3; ++i) Put<uint32_t>(&head, 0);
  Put<uint32_t>(&head, Crc32c(head.data(), head.size()));
  return head + body + index;
}

}  // namespace gemini::loader
