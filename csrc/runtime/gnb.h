// Reader of `.gnb` files (format: py/gemini/export/FORMAT.md): mmap, validate, typed views.
#ifndef GEMINI_CSRC_RUNTIME_GNB_H_
#define GEMINI_CSRC_RUNTIME_GNB_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "csrc/common/mapped_file.h"

namespace gemini::runtime {

// Every refusal of bad input: the message names the file, the field and the value.
// Bytes outside printable ASCII are shown as \xNN so a message quoting a corrupt file is
// always valid text.
class FormatError : public std::runtime_error {
 public:
  explicit FormatError(const std::string& msg) : std::runtime_error(Printable(msg)) {}
  static std::string Printable(const std::string& s);
};

enum DType : uint8_t { kF32 = 0, kF16 = 1, kBF16 = 2, kInt4F16 = 3, kInt4BF16 = 4 };
enum TokenizerKind : uint32_t { kTokNone = 0, kTokSentencePiece = 1, kTokBpe = 2 };

struct ModelConfig {
  std::string name;
  int vocab_size = 0, d_model = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0;
  int d_ff = 0, max_seq_len = 0, group_size = 0, bos_id = -1, eos_id = -1;
  double rope_base = 10000.0, norm_eps = 1e-6, logit_softcap = 0.0;
  bool tie_embeddings = true, add_bos = false;
  std::string activation = "gelu", chat_template;
};

struct TensorView {
  std::string name;
  DType dtype = kF32;
  std::vector<uint64_t> shape;
  uint32_t group_size = 0;
  const uint8_t* data = nullptr;
  uint64_t nbytes = 0;
  uint32_t crc = 0;
};

// Parses the flat JSON config object of a .gnb file (strings, numbers, bools).
ModelConfig ParseConfigJson(const std::string& json, const std::string& where);

// A parsed file. Owns the mapping (or the buffer) the views point into.
class GnbFile {
 public:
  // mmaps `path` and validates header, table, every tensor's CRC and the config's shapes.
  static std::unique_ptr<GnbFile> Open(const std::string& path, bool check_data_crc = true);
  // Same on a copy of `bytes` (tests, the fuzz target); `name` is used in messages.
  static std::unique_ptr<GnbFile> FromBytes(const std::string& bytes, const std::string& name,
                                            bool check_data_crc = true);

  const ModelConfig& config() const { return config_; }
  TokenizerKind tokenizer_kind() const { return tok_kind_; }
  const std::string& tokenizer_bytes() const { return tokenizer_; }
  const std::vector<TensorView>& tensors() const { return tensors_; }
  // The named tensor; throws FormatError naming the file when missing.
  const TensorView& Get(const std::string& name) const;
  const std::string& path() const { return path_; }
  uint64_t file_bytes() const { return bytes_.size(); }

 private:
  GnbFile() = default;
  void Parse(bool check_data_crc);
  void CheckModelShapes() const;

  std::string path_;
  MappedFile bytes_;  // The mapped file (Open) or a copy (FromBytes).
  ModelConfig config_;
  TokenizerKind tok_kind_ = kTokNone;
  std::string tokenizer_;
  std::vector<TensorView> tensors_;
  std::map<std::string, size_t> index_;
};

}  // namespace gemini::runtime

#endif  // GEMINI_CSRC_RUNTIME_GNB_H_
