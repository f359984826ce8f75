// Reader of GGUF files (llama.cpp's format, versions 2 and 3): mmap, validate, typed views.
//
// Layout: "GGUF" magic, u32 version, u64 tensor count, u64 key/value count; the key/values
// (u64-length strings, u32 value type, value; arrays are u32 element type + u64 count); the
// tensor infos (name, u32 n_dims, u64 ne[n_dims] with ne[0] the fastest axis, u32 ggml type,
// u64 offset); padding to general.alignment (default 32); the tensor data. Every refusal is a
// FormatError naming the file and the key or tensor at fault.
#ifndef GEMINI_CSRC_RUNTIME_GGUF_READER_H_
#define GEMINI_CSRC_RUNTIME_GGUF_READER_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "csrc/common/mapped_file.h"
#include "csrc/runtime/gnb.h"

namespace gemini::runtime {

// ggml tensor types the loader converts (others parse, and the model loader names them).
enum GgmlType : uint32_t {
  kGgmlF32 = 0, kGgmlF16 = 1, kGgmlQ4_0 = 2, kGgmlQ4_1 = 3, kGgmlQ8_0 = 8, kGgmlBF16 = 30,
};
const char* GgmlTypeName(uint32_t type);

struct GgufValue {
  enum Kind { kInt, kFloat, kBool, kString, kArray } kind = kInt;
  int64_t i = 0;
  double f = 0;
  std::string s;
  std::vector<std::string> strings;  // string arrays
  std::vector<double> numbers;       // numeric / bool arrays
};

struct GgufTensor {
  std::string name;
  uint32_t type = 0;
  std::vector<uint64_t> ne;  // ne[0] fastest (GGUF order): a matrix is [in, out]
  const uint8_t* data = nullptr;
  uint64_t nbytes = 0;
};

class GgufFile {
 public:
  static std::unique_ptr<GgufFile> Open(const std::string& path);
  static std::unique_ptr<GgufFile> FromBytes(const std::string& bytes, const std::string& name);

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  bool Has(const std::string& key) const { return kv_.count(key) > 0; }
  const GgufValue& Get(const std::string& key) const;  // FormatError when missing
  int64_t Int(const std::string& key) const;           // integer (or bool) key
  int64_t Int(const std::string& key, int64_t fallback) const;
  double Float(const std::string& key, double fallback) const;
  std::string Str(const std::string& key) const;
  std::string Str(const std::string& key, const std::string& fallback) const;
  const std::vector<GgufTensor>& tensors() const { return tensors_; }
  const GgufTensor* Find(const std::string& name) const;  // null when absent
  const GgufTensor& Tensor(const std::string& name) const;  // FormatError when absent
  // "<path>: " — the prefix of every message about this file.
  std::string Where() const { return path_ + ": "; }

 private:
  GgufFile() = default;
  void Parse();

  std::string path_;
  MappedFile bytes_;
  uint32_t version_ = 0;
  std::map<std::string, GgufValue> kv_;
  std::vector<GgufTensor> tensors_;
  std::map<std::string, size_t> index_;
};

}  // namespace gemini::runtime

#endif  // GEMINI_CSRC_RUNTIME_GGUF_READER_H_
