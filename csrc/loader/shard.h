// Reader of `.gshd` data shards (format: csrc/loader/FORMAT.md): mmap, full validation on
// open, zero-copy views of token records and media payloads. Every malformed input raises
// ShardError naming the file, the record and the byte offset; nothing is read out of bounds.
#ifndef GEMINI_CSRC_LOADER_SHARD_H_
#define GEMINI_CSRC_LOADER_SHARD_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "csrc/common/mapped_file.h"

namespace gemini::loader {

inline constexpr char kMagic[8] = {'G', 'E', 'M', 'S', 'H', 'A', 'R', 'D'};
inline constexpr uint32_t kVersion = 1;
inline constexpr uint64_t kHeaderSize = 64;
inline constexpr uint64_t kIndexEntrySize = 24;
inline constexpr uint64_t kMediaDescSize = 56;
enum Kind : uint32_t { kTokensU16 = 1, kTokensU32 = 2, kMultimodal = 3 };
enum MediaDtype : uint32_t { kU8 = 1, kI16 = 2, kF32 = 3, kEncoded = 4 };

class ShardError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Token ids of one record: `count` ids of `width` (2 or 4) bytes at `data` (aligned).
struct TokenView {
  const void* data = nullptr;
  uint32_t width = 2;
  uint64_t count = 0;
  uint32_t At(uint64_t i) const {
    return width == 2 ? static_cast<const uint16_t*>(data)[i]
                      : static_cast<const uint32_t*>(data)[i];
  }
};

struct MediaView {
  uint32_t modality, dtype, placement, num_placeholders, ndim;
  uint32_t shape[4];
  const uint8_t* data;
  uint64_t length;
};

class Shard {
 public:
  // Maps `path` read-only and validates header, index and (verify=true) every record's CRC
  // and token ids (each < vocab_size when the header's vocab_size is nonzero). Anything but
  // a regular file (FIFO, device, directory) is refused without blocking.
  static std::shared_ptr<Shard> Open(const std::string& path, bool verify = true);
  // Validates an in-memory copy of a file (fuzzing, tests); `name` is used in errors.
  static std::shared_ptr<Shard> FromBytes(const std::string& bytes, const std::string& name,
                                          bool verify = true);
  Shard(const Shard&) = delete;
  Shard& operator=(const Shard&) = delete;

  const std::string& path() const { return path_; }
  uint64_t num_records() const { return records_.size(); }
  uint32_t vocab_size() const { return vocab_size_; }
  uint64_t file_size() const { return bytes_.size(); }
  uint32_t kind(uint64_t i) const { return Get(i).kind; }
  uint64_t offset(uint64_t i) const { return Get(i).offset; }
  uint64_t length(uint64_t i) const { return Get(i).length; }
  const TokenView& tokens(uint64_t i) const { return Get(i).tokens; }
  std::vector<MediaView> media(uint64_t i) const;
  // Recomputes record i's CRC against the index and checks its token ids against
  // vocab_size (for verify=false users).
  void VerifyRecord(uint64_t i) const;
  // Throws ShardError for the first token id of record i that is >= `limit` (0 = no limit),
  // naming the file, record, position and value; `limit_name` says whose limit it is.
  void CheckTokenIds(uint64_t i, uint32_t limit, const std::string& limit_name) const;
  // The error CheckTokenIds throws, for callers that found the bad id themselves.
  [[noreturn]] void BadTokenId(uint64_t i, uint64_t position, uint32_t id, uint32_t limit,
                               const std::string& limit_name) const;

 private:
  struct Record {
    uint64_t offset, length;
    uint32_t kind, crc;
    TokenView tokens;
    uint32_t num_media = 0;
  };
  Shard() = default;
  void Parse(bool verify);
  [[noreturn]] void Fail(const std::string& where, uint64_t offset, const std::string& what) const;
  const Record& Get(uint64_t i) const;

  std::string path_;
  MappedFile bytes_;  // The mapped file (Open) or an 8-aligned copy (FromBytes).
  uint32_t vocab_size_ = 0;
  std::vector<Record> records_;
};

}  // namespace gemini::loader

#endif  // GEMINI_CSRC_LOADER_SHARD_H_
