#include "csrc/runtime/gnb_json.h"

#include <set>

#include "csrc/runtime/gnb.h"

namespace gemini::runtime {
namespace {

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

class Parser {
 public:
  Parser(const std::string& s, const std::string& where) : s_(s), where_(where) {}

  std::vector<std::pair<std::string, JsonValue>> Object() {
    std::vector<std::pair<std::string, JsonValue>> out;
    std::set<std::string> seen;
    Ws();
    Expect('{');
    Ws();
    if (Peek() == '}') {
      ++i_;
    } else {
      while (true) {
        Ws();
        const size_t key_at = i_;
        std::string key = String();
        if (!seen.insert(key).second)
          Err("duplicate key '" + key + "' at byte " + std::to_string(key_at));
        Ws();
        Expect(':');
        Ws();
        out.emplace_back(key, Value(key));
        Ws();
        if (Peek() == ',') {
          ++i_;
          continue;
        }
        Expect('}');
        break;
      }
    }
    Ws();
    if (i_ != s_.size())
      Err(std::to_string(s_.size() - i_) + " trailing bytes after the object at byte " +
          std::to_string(i_));
    return out;
  }

 private:
  [[noreturn]] void Err(const std::string& m) const {
    throw FormatError(where_ + ": config: " + m);
  }
  char Peek() const {
    if (i_ >= s_.size()) Err("unexpected end of the config JSON");
    return s_[i_];
  }
  void Ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }
  void Expect(char c) {
    if (Peek() != c) Err(std::string("expected '") + c + "' at byte " + std::to_string(i_));
    ++i_;
  }
  bool Literal(const char* word) {
    const std::string w = word;
    if (s_.compare(i_, w.size(), w) != 0) return false;
    i_ += w.size();
    return true;
  }
  JsonValue Value(const std::string& key) {
    JsonValue v;
    const char c = Peek();
    if (c == '"') {
      v.kind = JsonValue::kString;
      v.text = String();
    } else if (Literal("true")) {
      v.kind = JsonValue::kBool;
      v.text = "true";
    } else if (Literal("false")) {
      v.kind = JsonValue::kBool;
      v.text = "false";
    } else if (Literal("null")) {
      v.kind = JsonValue::kNull;
      v.text = "null";
    } else if (c == '-' || (c >= '0' && c <= '9')) {
      v.kind = JsonValue::kNumber;
      Number(key, &v);
    } else if (c == '{' || c == '[') {
      Err("'" + key + "' is a nested " + (c == '{' ? "object" : "array") +
          "; the config is a flat object");
    } else {
      // The offending token, as written, up to the next delimiter.
      size_t end = i_;
      while (end < s_.size() && end - i_ < 40 && s_[end] != ',' && s_[end] != '}') ++end;
      Err("'" + key + "' = " + s_.substr(i_, end - i_) + " is not a JSON value");
    }
    return v;
  }
  static bool Digit(char c) { return c >= '0' && c <= '9'; }
  // JSON's number grammar: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
  void Number(const std::string& key, JsonValue* v) {
    const size_t start = i_;
    auto bad = [&] {
      size_t end = i_;
      while (end < s_.size() && end - start < 40 && s_[end] != ',' && s_[end] != '}' &&
             s_[end] != ' ' && s_[end] != '\n')
        ++end;
      Err("'" + key + "' = " + s_.substr(start, end - start) + " is not a JSON number");
    };
    if (i_ < s_.size() && s_[i_] == '-') ++i_;
    if (i_ >= s_.size() || !Digit(s_[i_])) bad();
    if (s_[i_] == '0') {
      ++i_;
    } else {
      while (i_ < s_.size() && Digit(s_[i_])) ++i_;
    }
    bool integer = true;
    if (i_ < s_.size() && s_[i_] == '.') {
      integer = false;
      ++i_;
      if (i_ >= s_.size() || !Digit(s_[i_])) bad();
      while (i_ < s_.size() && Digit(s_[i_])) ++i_;
    }
    if (i_ < s_.size() && (s_[i_] == 'e' || s_[i_] == 'E')) {
      integer = false;
      ++i_;
      if (i_ < s_.size() && (s_[i_] == '+' || s_[i_] == '-')) ++i_;
      if (i_ >= s_.size() || !Digit(s_[i_])) bad();
      while (i_ < s_.size() && Digit(s_[i_])) ++i_;
    }
    // A number runs into its delimiter: "12abc" or "1.5.2" are not numbers.
    if (i_ < s_.size() && s_[i_] != ',' && s_[i_] != '}' && s_[i_] != ' ' && s_[i_] != '\t' &&
        s_[i_] != '\n' && s_[i_] != '\r')
      bad();
    v->text = s_.substr(start, i_ - start);
    v->is_integer = integer;
  }
  uint32_t Hex4() {
    if (s_.size() - i_ < 4) Err("truncated \\u escape at byte " + std::to_string(i_));
    uint32_t v = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = s_[i_++];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= c - '0';
      else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
      else Err("bad \\u escape at byte " + std::to_string(i_ - 1));
    }
    return v;
  }
  std::string String() {
    Expect('"');
    std::string out;
    while (true) {
      const unsigned char c = static_cast<unsigned char>(Peek());
      ++i_;
      if (c == '"') return out;
      if (c < 0x20) Err("raw control character " + std::to_string(c) + " in a string at byte " + std::to_string(i_ - 1));
      if (c != '\\') {
        out.push_back(static_cast<char>(c));
        continue;
      }
      const char e = Peek();
      ++i_;
      switch (e) {
        case '"': out.push_back('"'); break;
        case '\\': out.push_back('\\'); break;
        case '/': out.push_back('/'); break;
        case 'b': out.push_back('\b'); break;
        case 'f': out.push_back('\f'); break;
        case 'n': out.push_back('\n'); break;
        case 'r': out.push_back('\r'); break;
        case 't': out.push_back('\t'); break;
        case 'u': {
          const size_t at = i_ - 2;
          uint32_t cp = Hex4();
          if (cp >= 0xDC00 && cp < 0xE000) Err("lone low surrogate \\u escape at byte " + std::to_string(at));
          if (cp >= 0xD800 && cp < 0xDC00) {
            if (s_.compare(i_, 2, "\\u") != 0) Err("lone high surrogate \\u escape at byte " + std::to_string(at));
            i_ += 2;
            const uint32_t lo = Hex4();
            if (lo < 0xDC00 || lo >= 0xE000) Err("high surrogate without its low half at byte " + std::to_string(at));
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          AppendUtf8(cp, &out);
          break;
        }
        default:
          Err(std::string("unknown escape '\\") + e + "' at byte " + std::to_string(i_ - 2));
      }
    }
  }

  const std::string& s_;
  const std::string& where_;
  size_t i_ = 0;
};

}  // namespace

bool IsValidUtf8(const std::string& s, size_t* bad_at) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = s[i];
    int len;
    uint32_t cp, min;
    if (c < 0x80) { len = 1; cp = c; min = 0; }
    else if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; min = 0x80; }
    else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; min = 0x800; }
    else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; min = 0x10000; }
    else { *bad_at = i; return false; }
    if (s.size() - i < static_cast<size_t>(len)) { *bad_at = i; return false; }
    for (int k = 1; k < len; ++k) {
      const unsigned char d = s[i + k];
      if ((d & 0xC0) != 0x80) { *bad_at = i + k; return false; }
      cp = (cp << 6) | (d & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp < 0xE000)) { *bad_at = i; return false; }
    i += len;
  }
  return true;
}

std::vector<std::pair<std::string, JsonValue>> ParseFlatJsonObject(const std::string& json,
                                                                   const std::string& where) {
  size_t bad = 0;
  if (!IsValidUtf8(json, &bad))
    throw FormatError(where + ": config: not valid UTF-8 at byte " + std::to_string(bad));
  return Parser(json, where).Object();
}

}  // namespace gemini::runtime
