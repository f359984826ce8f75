#include "csrc/runtime/tokenizer.h"

#include <sentencepiece_processor.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <stdexcept>
#include <unordered_map>
#include <utility>

namespace gemini::runtime {
namespace {

class SentencePieceTokenizer : public Tokenizer {
 public:
  SentencePieceTokenizer(const std::string& blob, const std::string& where) {
    auto status = sp_.LoadFromSerializedProto(blob);
    if (!status.ok())
      throw FormatError(where + ": tokenizer: SentencePiece model does not load: " + status.ToString());
  }
  std::vector<int> Encode(const std::string& text) const override {
    std::vector<int> ids;
    auto status = sp_.Encode(text, &ids);
    if (!status.ok()) throw std::invalid_argument("SentencePiece encode failed: " + status.ToString());
    return ids;
  }
  std::string Decode(const std::vector<int>& ids) const override {
    std::string out;
    auto status = sp_.Decode(ids, &out);
    if (!status.ok()) throw std::invalid_argument("SentencePiece decode failed: " + status.ToString());
    return out;
  }

 private:
  sentencepiece::SentencePieceProcessor sp_;
};

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// UTF-8 -> code points with the byte offset of each; throws on malformed input.
void DecodeUtf8(const std::string& s, std::vector<uint32_t>* cps, std::vector<size_t>* offs) {
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = s[i];
    int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (len == 0 || i + len > s.size())
      throw std::invalid_argument("prompt is not valid UTF-8 at byte " + std::to_string(i));
    uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
    for (int k = 1; k < len; ++k) {
      unsigned char d = s[i + k];
      if ((d >> 6) != 2) throw std::invalid_argument("prompt is not valid UTF-8 at byte " + std::to_string(i + k));
      cp = (cp << 6) | (d & 0x3F);
    }
    cps->push_back(cp);
    offs->push_back(i);
    i += len;
  }
  offs->push_back(s.size());
}

class BpeTokenizer : public Tokenizer {
 public:
  BpeTokenizer(const std::string& blob, const std::string& where) : where_(where) {
    size_t pos = 0;
    auto u32 = [&](const char* field) {
      if (pos + 4 > blob.size()) Fail(std::string("blob ends inside ") + field);
      uint32_t v;
      std::memcpy(&v, blob.data() + pos, 4);
      pos += 4;
      return v;
    };
    uint32_t n_vocab = u32("n_vocab");
    if (n_vocab == 0 || n_vocab > (1u << 24)) Fail("n_vocab=" + std::to_string(n_vocab) + " out of range");
    for (uint32_t i = 0; i < n_vocab; ++i) {
      if (pos + 2 > blob.size()) Fail("blob ends inside the vocabulary");
      uint16_t len;
      std::memcpy(&len, blob.data() + pos, 2);
      pos += 2;
      if (pos + len > blob.size()) Fail("blob ends inside token " + std::to_string(i));
      vocab_.emplace_back(blob.data() + pos, len);
      pos += len;
      ids_.emplace(vocab_.back(), static_cast<int>(i));
    }
    uint32_t n_merges = u32("n_merges");
    for (uint32_t r = 0; r < n_merges; ++r) {
      uint32_t a = u32("merge"), b = u32("merge");
      if (a >= n_vocab || b >= n_vocab) Fail("merge " + std::to_string(r) + " names a token id past the vocabulary");
      auto it = ids_.find(vocab_[a] + vocab_[b]);
      if (it == ids_.end()) Fail("merge " + std::to_string(r) + " makes a string that is not in the vocabulary");
      merges_.emplace(Key(a, b), std::make_pair(static_cast<int>(r), it->second));
    }
    uint32_t n_special = u32("n_special");
    for (uint32_t i = 0; i < n_special; ++i) {
      uint32_t id = u32("special id");
      if (id >= n_vocab) Fail("special token id " + std::to_string(id) + " past the vocabulary");
      specials_.emplace_back(vocab_[id], static_cast<int>(id));
    }
    // Longest first, so a special token that prefixes another never wins wrongly.
    std::sort(specials_.begin(), specials_.end(),
              [](const auto& x, const auto& y) { return x.first.size() > y.first.size(); });
    split_digits_ = (u32("flags") & 1) != 0;
    ReadRanges(&letters_, u32("n_letter"), u32, "letter");
    ReadRanges(&numbers_, u32("n_number"), u32, "number");
    if (pos != blob.size()) Fail("blob has " + std::to_string(blob.size() - pos) + " trailing bytes");
    // GPT-2's byte <-> printable code point table.
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      bool direct = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      uint32_t cp = direct ? b : 256 + extra++;
      std::string s;
      AppendUtf8(cp, &s);
      byte_char_[b] = s;
      char_byte_[cp] = static_cast<uint8_t>(b);
    }
  }

  std::vector<int> Encode(const std::string& text) const override {
    std::vector<uint32_t> check;
    std::vector<size_t> offs;
    DecodeUtf8(text, &check, &offs);  // Validates the whole prompt up front.
    std::vector<int> out;
    size_t start = 0, i = 0;
    while (i < text.size()) {
      int sid = -1;
      size_t slen = 0;
      for (const auto& sp : specials_)
        if (!sp.first.empty() && text.compare(i, sp.first.size(), sp.first) == 0) {
          sid = sp.second;
          slen = sp.first.size();
          break;
        }
      if (sid < 0) { ++i; continue; }
      EncodeOrdinary(text.substr(start, i - start), &out);
      out.push_back(sid);
      i += slen;
      start = i;
    }
    EncodeOrdinary(text.substr(start), &out);
    return out;
  }

  std::string Decode(const std::vector<int>& ids) const override {
    std::string out;
    for (int id : ids) {
      if (id < 0 || id >= static_cast<int>(vocab_.size()))
        throw std::out_of_range("token id " + std::to_string(id) + " outside the vocabulary");
      std::vector<uint32_t> cps;
      std::vector<size_t> offs;
      DecodeUtf8(vocab_[id], &cps, &offs);
      for (uint32_t cp : cps) {
        auto it = char_byte_.find(cp);
        if (it != char_byte_.end()) out.push_back(static_cast<char>(it->second));
        else AppendUtf8(cp, &out);
      }
    }
    return out;
  }

 private:
  using Ranges = std::vector<std::pair<uint32_t, uint32_t>>;
  static uint64_t Key(uint32_t a, uint32_t b) { return (static_cast<uint64_t>(a) << 32) | b; }
  [[noreturn]] void Fail(const std::string& m) const { throw FormatError(where_ + ": tokenizer (byte-level BPE): " + m); }

  template <typename F>
  void ReadRanges(Ranges* r, uint32_t n, F& u32, const char* what) {
    if (n > (1u << 20)) Fail(std::string("n_") + what + " ranges implausible");
    for (uint32_t i = 0; i < n; ++i) {
      uint32_t lo = u32("range"), hi = u32("range");
      if (lo > hi || (!r->empty() && lo <= r->back().second)) Fail(std::string(what) + " ranges not sorted/disjoint");
      r->emplace_back(lo, hi);
    }
  }
  static bool In(const Ranges& r, uint32_t cp) {
    auto it = std::upper_bound(r.begin(), r.end(), std::make_pair(cp, UINT32_MAX));
    return it != r.begin() && std::prev(it)->second >= cp;
  }
  static bool IsSpace(uint32_t c) {  // Unicode White_Space (what \s means in the regex)
    return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
  }
  bool IsL(uint32_t c) const { return In(letters_, c); }
  bool IsN(uint32_t c) const { return In(numbers_, c); }

  // The GPT-2 pattern on cps[b, e): appends [begin, end) code point spans.
  void Pretokenize(const std::vector<uint32_t>& cp, size_t b, size_t e,
                   std::vector<std::pair<size_t, size_t>>* spans) const {
    size_t i = b;
    auto other = [&](uint32_t c) { return !IsSpace(c) && !IsL(c) && !IsN(c); };
    while (i < e) {
      uint32_t c = cp[i];
      size_t j = i;
      if (c == '\'' && i + 1 < e) {
        uint32_t n1 = cp[i + 1], n2 = i + 2 < e ? cp[i + 2] : 0;
        if (n1 == 's' || n1 == 't' || n1 == 'm' || n1 == 'd') j = i + 2;
        else if ((n1 == 'r' && n2 == 'e') || (n1 == 'v' && n2 == 'e') || (n1 == 'l' && n2 == 'l')) j = i + 3;
      }
      if (j == i) {
        size_t k = (c == ' ' && i + 1 < e) ? i + 1 : i;
        if (IsL(cp[k])) {
          j = k;
          while (j < e && IsL(cp[j])) ++j;
        } else if (IsN(cp[k])) {
          j = k;
          while (j < e && IsN(cp[j])) ++j;
        } else if (other(cp[k])) {
          j = k;
          while (j < e && other(cp[j])) ++j;
        } else {  // whitespace: \s+(?!\S) then \s+
          j = i;
          while (j < e && IsSpace(cp[j])) ++j;
          if (j < e && j - i >= 2) --j;  // leave the last space to prefix the next word
        }
      }
      spans->emplace_back(i, j);
      i = j;
    }
  }

  void Bpe(const std::string& word, std::vector<int>* out) const {
    std::vector<int> sym;
    for (unsigned char ch : word) {
      auto it = ids_.find(byte_char_[ch]);
      if (it == ids_.end()) throw std::invalid_argument("byte " + std::to_string(ch) + " has no token in the BPE vocabulary");
      sym.push_back(it->second);
    }
    while (sym.size() > 1) {
      int best_rank = INT32_MAX, best_at = -1, best_id = -1;
      for (size_t k = 0; k + 1 < sym.size(); ++k) {
        auto it = merges_.find(Key(sym[k], sym[k + 1]));
        if (it != merges_.end() && it->second.first < best_rank) {
          best_rank = it->second.first;
          best_at = static_cast<int>(k);
          best_id = it->second.second;
        }
      }
      if (best_at < 0) break;
      sym[best_at] = best_id;
      sym.erase(sym.begin() + best_at + 1);
    }
    out->insert(out->end(), sym.begin(), sym.end());
  }

  void EncodeOrdinary(const std::string& text, std::vector<int>* out) const {
    if (text.empty()) return;
    std::vector<uint32_t> cp;
    std::vector<size_t> offs;
    DecodeUtf8(text, &cp, &offs);
    // Digits pre-tokenizer (individual digits) first: every number char is its own segment.
    std::vector<std::pair<size_t, size_t>> segments, spans;
    size_t s = 0;
    for (size_t i = 0; i < cp.size(); ++i) {
      if (split_digits_ && IsN(cp[i])) {
        if (s < i) segments.emplace_back(s, i);
        segments.emplace_back(i, i + 1);
        s = i + 1;
      }
    }
    if (s < cp.size()) segments.emplace_back(s, cp.size());
    for (const auto& seg : segments) Pretokenize(cp, seg.first, seg.second, &spans);
    for (const auto& sp : spans) Bpe(text.substr(offs[sp.first], offs[sp.second] - offs[sp.first]), out);
  }

  std::string where_;
  std::vector<std::string> vocab_;
  std::unordered_map<std::string, int> ids_;
  std::unordered_map<uint64_t, std::pair<int, int>> merges_;  // (a, b) -> (rank, merged id)
  std::vector<std::pair<std::string, int>> specials_;
  bool split_digits_ = false;
  Ranges letters_, numbers_;
  std::string byte_char_[256];
  std::map<uint32_t, uint8_t> char_byte_;
};

}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::Create(TokenizerKind kind, const std::string& blob,
                                             const std::string& where) {
  if (kind == kTokSentencePiece) return std::make_unique<SentencePieceTokenizer>(blob, where);
  if (kind == kTokBpe) return std::make_unique<BpeTokenizer>(blob, where);
  throw FormatError(where + ": the file has no tokenizer (tokenizer_kind=0); pass --prompt_ids");
}

}  // namespace gemini::runtime
