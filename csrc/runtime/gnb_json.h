// The strict flat JSON object of a .gnb config: {"key": string | number | true | false |
// null, ...} and nothing else. Strict where a lenient parser would let two readers disagree:
// the bytes must be valid UTF-8, keys unique, numbers in JSON's own grammar (no NaN,
// Infinity, hex or '+'), strings without raw control characters or lone surrogates, and
// nothing but whitespace after the closing brace.
#ifndef GEMINI_CSRC_RUNTIME_GNB_JSON_H_
#define GEMINI_CSRC_RUNTIME_GNB_JSON_H_

#include <string>
#include <utility>
#include <vector>

namespace gemini::runtime {

struct JsonValue {
  enum Kind { kString, kNumber, kBool, kNull } kind = kNull;
  std::string text;  // kString: the decoded UTF-8; otherwise the value as written.
  bool is_integer = false;  // kNumber written without fraction or exponent.
};

// Parses `json`; throws FormatError "<where>: config: <what>" on anything else. Members come
// back in file order.
std::vector<std::pair<std::string, JsonValue>> ParseFlatJsonObject(const std::string& json,
                                                                   const std::string& where);

// True when `s` is well-formed UTF-8 (no overlongs, surrogates or code points past U+10FFFF);
// `bad_at` receives the offset of the first bad byte.
bool IsValidUtf8(const std::string& s, size_t* bad_at);

}  // namespace gemini::runtime

#endif  // GEMINI_CSRC_RUNTIME_GNB_JSON_H_
