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
  bool qk_norm = false;  // per-head q/k RMSNorm (tensors layers.<i>.q_norm / k_norm, f32 [Dh])
  std::string activation = "gelu", chat_template;
};

// Bounds of the config's sizes (FORMAT.md, Errors): generous for every real model, and small
// enough that no product of them overflows the runtime's int shapes or a u64 byte count.
inline constexpr int64_t kMaxVocab = 1 << 24;
inline constexpr int64_t kMaxWidth = 1 << 16;      // d_model
inline constexpr int64_t kMaxLayers = 1024;
inline constexpr int64_t kMaxHeads = 1024;         // n_heads, n_kv_heads
inline constexpr int64_t kMaxHeadDim = 1024;
inline constexpr int64_t kMaxFf = 1 << 20;         // d_ff
inline constexpr int64_t kMaxSeqLen = 1 << 24;
inline constexpr uint64_t kMaxConfigBytes = 1 << 20;

struct TensorView {
  std::string name;
  DType dtype = kF32;
  std::vector<uint64_t> shape;
  uint32_t group_size = 0;
  const uint8_t* data = nullptr;
  uint64_t nbytes = 0;
  uint32_t crc = 0;
};

// Parses the strict flat JSON config object of a .gnb file: every key known and present
// (qk_norm optional), integers range-checked as 64-bit before narrowing (messages quote the
// value as written), then ValidateConfig. Throws FormatError "<where>: config: ...".
ModelConfig ParseConfigJson(const std::string& json, const std::string& where);

// The range and consistency checks of a config however it was made (JSON, GGUF metadata):
// sizes in their bounds, n_heads a multiple of n_kv_heads, even head_dim, norm_eps in (0, 1),
// rope_base > 1, logit_softcap 0 or >= 1, all finite, bos/eos ids in the vocabulary or -1.
void ValidateConfig(const ModelConfig& config, const std::string& where);

// One tensor a config's model has: the single list the reader checks files against and
// Model::Random generates (benchmarks). f32 vectors (norm scales) or int4 matrices [N, K].
struct TensorSpec {
  std::string name;
  bool int4 = false;
  std::vector<uint64_t> shape;
};

// Every tensor of the dense decoder `config` describes, in FORMAT.md order: embed, per layer
// attn_norm, [q_norm, k_norm when qk_norm], wq, wk, wv, wo, mlp_norm, w_gate, w_up, w_down;
// final_norm; unembed only when the embeddings are untied.
std::vector<TensorSpec> ExpectedTensors(const ModelConfig& config);

// Structural checks of a tokenizer blob against the config (FORMAT.md, Tokenizer blobs): no
// blob for kind 0; for SentencePiece a well-formed protobuf with 1..vocab_size pieces; for
// byte-level BPE every count and length in bounds, no empty or repeated token, merges of
// valid ids whose concatenation is a token, special ids in range, sorted disjoint Unicode
// ranges, no trailing bytes. bos/eos ids must name tokens of the tokenizer.
void ValidateTokenizer(TokenizerKind kind, const std::string& blob, const ModelConfig& config,
                       const std::string& where);

// A parsed file. Owns the mapping (or the buffer) the views point into.
class GnbFile {
 public:
  // mmaps `path` and validates all of it: header, config values, tokenizer blob, table
  // (unknown, missing, duplicate, empty-named or overlapping tensors are refused), every
  // tensor's CRC, and dtypes/shapes against ExpectedTensors(config). A FIFO, device or
  // directory is refused without blocking. This is the one validation of the format: the
  // Python reader (gemini.export.gnb.decode) calls it through csrc.runtime._gnb.
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
  // The file's first byte (tensor offsets are `view.data - data()`).
  const uint8_t* data() const { return bytes_.data(); }

 private:
  GnbFile() = default;
  void Parse(bool check_data_crc);
  void CheckNoAliasing() const;
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
