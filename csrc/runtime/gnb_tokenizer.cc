// Structural checks of a .gnb tokenizer blob (FORMAT.md, Tokenizer blobs), made by the reader
// before any tokenizer library sees the bytes.
#include <cstring>
#include <unordered_set>

#include "csrc/runtime/gnb.h"
#include "csrc/runtime/gnb_json.h"

namespace gemini::runtime {
namespace {

constexpr uint32_t kMaxMerges = 1u << 24;
constexpr uint32_t kMaxRanges = 1u << 20;
constexpr uint32_t kMaxCodePoint = 0x10FFFF;

class Blob {
 public:
  Blob(const std::string& b, const std::string& where) : b_(b), where_(where) {}
  [[noreturn]] void Fail(const std::string& m) const {
    throw FormatError(where_ + ": tokenizer: " + m);
  }
  uint32_t U32(const std::string& field) {
    if (b_.size() - pos_ < 4) Fail("blob ends inside " + field + " at byte " + std::to_string(pos_));
    uint32_t v;
    std::memcpy(&v, b_.data() + pos_, 4);
    pos_ += 4;
    return v;
  }
  std::string Bytes16(const std::string& field) {
    if (b_.size() - pos_ < 2) Fail("blob ends inside " + field + " at byte " + std::to_string(pos_));
    uint16_t n;
    std::memcpy(&n, b_.data() + pos_, 2);
    pos_ += 2;
    if (b_.size() - pos_ < n) Fail("blob ends inside " + field + " at byte " + std::to_string(pos_));
    std::string s = b_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  size_t pos() const { return pos_; }
  size_t size() const { return b_.size(); }

 private:
  const std::string& b_;
  const std::string& where_;
  size_t pos_ = 0;
};

// Byte-level BPE; returns the number of tokens.
uint32_t CheckBpe(const std::string& blob, const ModelConfig& c, const std::string& where) {
  Blob b(blob, where);
  const uint32_t n_vocab = b.U32("n_vocab");
  if (n_vocab == 0 || n_vocab > static_cast<uint32_t>(c.vocab_size))
    b.Fail("n_vocab=" + std::to_string(n_vocab) + " out of range [1, vocab_size=" +
           std::to_string(c.vocab_size) + "]");
  std::vector<std::string> vocab;
  std::unordered_set<std::string> strings;
  vocab.reserve(n_vocab);
  for (uint32_t i = 0; i < n_vocab; ++i) {
    std::string t = b.Bytes16("token " + std::to_string(i));
    size_t bad = 0;
    if (t.empty()) b.Fail("token " + std::to_string(i) + " is empty");
    if (!IsValidUtf8(t, &bad)) b.Fail("token " + std::to_string(i) + " is not valid UTF-8");
    if (!strings.insert(t).second) b.Fail("token " + std::to_string(i) + " '" + t + "' appears twice");
    vocab.push_back(std::move(t));
  }
  const uint32_t n_merges = b.U32("n_merges");
  if (n_merges > kMaxMerges || n_merges > (b.size() - b.pos()) / 8)
    b.Fail("n_merges=" + std::to_string(n_merges) + " does not fit the blob");
  for (uint32_t r = 0; r < n_merges; ++r) {
    const std::string m = "merge " + std::to_string(r);
    const uint32_t left = b.U32(m), right = b.U32(m);
    if (left >= n_vocab || right >= n_vocab)
      b.Fail(m + " (" + std::to_string(left) + ", " + std::to_string(right) +
             ") names a token id past n_vocab=" + std::to_string(n_vocab));
    if (!strings.count(vocab[left] + vocab[right]))
      b.Fail(m + " (" + std::to_string(left) + ", " + std::to_string(right) +
             ") makes a string that is not a token");
  }
  const uint32_t n_special = b.U32("n_special");
  if (n_special > n_vocab) b.Fail("n_special=" + std::to_string(n_special) + " > n_vocab");
  for (uint32_t i = 0; i < n_special; ++i) {
    const uint32_t id = b.U32("special id");
    if (id >= n_vocab)
      b.Fail("special token id " + std::to_string(id) + " past n_vocab=" + std::to_string(n_vocab));
  }
  const uint32_t flags = b.U32("flags");
  if (flags & ~1u) b.Fail("flags=" + std::to_string(flags) + " has unknown bits (only bit 0)");
  for (const char* table : {"letter", "number"}) {
    const uint32_t n = b.U32(std::string("n_") + table);
    if (n > kMaxRanges || n > (b.size() - b.pos()) / 8)
      b.Fail(std::string("n_") + table + "=" + std::to_string(n) + " does not fit the blob");
    int64_t last = -1;
    for (uint32_t i = 0; i < n; ++i) {
      const uint32_t lo = b.U32("range"), hi = b.U32("range");
      if (lo > hi || hi > kMaxCodePoint || static_cast<int64_t>(lo) <= last)
        b.Fail(std::string(table) + " range " + std::to_string(i) + " [" + std::to_string(lo) +
               ", " + std::to_string(hi) + "] not sorted, disjoint and within U+10FFFF");
      last = hi;
    }
  }
  if (b.pos() != b.size())
    b.Fail("blob has " + std::to_string(b.size() - b.pos()) + " trailing bytes");
  return n_vocab;
}

// Protobuf wire format: one varint at `*p` (at most 10 bytes).
bool Varint(const std::string& s, size_t* p, uint64_t* v) {
  *v = 0;
  for (int shift = 0; shift < 64 && *p < s.size(); shift += 7) {
    const uint8_t byte = static_cast<uint8_t>(s[(*p)++]);
    *v |= static_cast<uint64_t>(byte & 0x7F) << shift;
    if (!(byte & 0x80)) return true;
  }
  return false;
}

// A SentencePiece ModelProto: every top-level field well-formed; returns the number of
// pieces (field 1, `repeated SentencePiece pieces`).
uint32_t CheckSentencePiece(const std::string& blob, const ModelConfig& c,
                            const std::string& where) {
  auto fail = [&](const std::string& m) -> void { throw FormatError(where + ": tokenizer: SentencePiece model: " + m); };
  uint64_t pieces = 0;
  size_t p = 0;
  while (p < blob.size()) {
    const size_t at = p;
    uint64_t key, len;
    if (!Varint(blob, &p, &key) || (key >> 3) == 0)
      fail("bad field key at byte " + std::to_string(at));
    switch (key & 7) {
      case 0:
        if (!Varint(blob, &p, &len)) fail("bad varint at byte " + std::to_string(p));
        break;
      case 1:
        if (blob.size() - p < 8) fail("field at byte " + std::to_string(at) + " runs past the end");
        p += 8;
        break;
      case 5:
        if (blob.size() - p < 4) fail("field at byte " + std::to_string(at) + " runs past the end");
        p += 4;
        break;
      case 2:
        if (!Varint(blob, &p, &len) || len > blob.size() - p)
          fail("field at byte " + std::to_string(at) + " runs past the end");
        p += len;
        if ((key >> 3) == 1) ++pieces;
        break;
      default:
        fail("wire type " + std::to_string(key & 7) + " at byte " + std::to_string(at));
    }
  }
  if (pieces == 0 || pieces > static_cast<uint64_t>(c.vocab_size))
    fail(std::to_string(pieces) + " pieces, expected [1, vocab_size=" + std::to_string(c.vocab_size) + "]");
  return static_cast<uint32_t>(pieces);
}

}  // namespace

void ValidateTokenizer(TokenizerKind kind, const std::string& blob, const ModelConfig& c,
                       const std::string& where) {
  uint32_t n_tokens = 0;
  if (kind == kTokNone) {
    if (!blob.empty())
      throw FormatError(where + ": tokenizer_kind=0 (none) but tokenizer_bytes=" + std::to_string(blob.size()));
    return;
  }
  n_tokens = kind == kTokBpe ? CheckBpe(blob, c, where) : CheckSentencePiece(blob, c, where);
  for (const auto& [name, id] : {std::make_pair("bos_id", c.bos_id), std::make_pair("eos_id", c.eos_id)})
    if (id >= static_cast<int64_t>(n_tokens))
      throw FormatError(where + ": config: " + name + "=" + std::to_string(id) +
                        " is not a token of the tokenizer (" + std::to_string(n_tokens) + " tokens)");
}

}  // namespace gemini::runtime
