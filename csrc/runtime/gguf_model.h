// llama-architecture GGUF files -> a runnable Model (weights repacked into the kernels' layouts:
// Q4_0 -> the .gnb int4 layout exactly, Q4_1 -> int4 with mins, Q8_0 -> int8; F32/F16/BF16
// matrices are quantised to Q8_0-style int8; Q/K rows un-permuted from llama.cpp's interleaved
// RoPE order to rotate-half), plus its byte-level BPE tokenizer and ChatML prompt template.
#ifndef GEMINI_CSRC_RUNTIME_GGUF_MODEL_H_
#define GEMINI_CSRC_RUNTIME_GGUF_MODEL_H_

#include <memory>
#include <string>

#include "csrc/runtime/gguf_reader.h"
#include "csrc/runtime/model.h"
#include "csrc/runtime/tokenizer.h"

namespace gemini::runtime {

// The model config from llama.* / tokenizer.* keys (FormatError naming the key otherwise).
ModelConfig GgufConfig(const GgufFile& f);
// Every tensor converted; the model owns its copy (the file may be closed afterwards).
std::unique_ptr<Model> ModelFromGguf(const GgufFile& f, const Kernels& kernels);
// The tokenizer (tokenizer.ggml.model = "gpt2"), as our byte-level BPE blob (FORMAT.md kind 2)
// with the Unicode tables compiled into the runtime.
std::string GgufBpeBlob(const GgufFile& f);
std::unique_ptr<Tokenizer> TokenizerFromGguf(const GgufFile& f);
// True when `path` starts with the GGUF magic.
bool IsGgufFile(const std::string& path);

// A model file of either kind, chosen by its magic: .gnb or GGUF.
struct LoadedModel {
  std::shared_ptr<GnbFile> gnb;        // the .gnb mapping (null for GGUF: weights were copied)
  std::unique_ptr<Model> model;
  std::unique_ptr<Tokenizer> tokenizer;  // null when the file has none (or none we support)
  std::string no_tokenizer;            // why tokenizer is null
  std::string path;
};
LoadedModel OpenModelFile(const std::string& path, const Kernels& kernels);

}  // namespace gemini::runtime

#endif  // GEMINI_CSRC_RUNTIME_GGUF_MODEL_H_
