// Tokenizers of .gnb files: SentencePiece (the C++ library) and byte-level BPE (GPT-2 style,
// our own implementation; blob layout in py/gemini/export/FORMAT.md).
#ifndef GEMINI_CSRC_RUNTIME_TOKENIZER_H_
#define GEMINI_CSRC_RUNTIME_TOKENIZER_H_

#include <memory>
#include <string>
#include <vector>

#include "csrc/runtime/gnb.h"

namespace gemini::runtime {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Throws FormatError (bad blob) naming `where`.
  static std::unique_ptr<Tokenizer> Create(TokenizerKind kind, const std::string& blob,
                                           const std::string& where);
  // Text (UTF-8) -> ids. Throws std::invalid_argument for invalid UTF-8.
  virtual std::vector<int> Encode(const std::string& text) const = 0;
  virtual std::string Decode(const std::vector<int>& ids) const = 0;
};

}  // namespace gemini::runtime

#endif  // GEMINI_CSRC_RUNTIME_TOKENIZER_H_
