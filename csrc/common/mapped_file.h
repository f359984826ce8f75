// A whole file's bytes, mapped read-only: the storage under this repo's binary-format readers
// (data shards, .gnb exports), which validate once and then hand out zero-copy views, so the
// bytes must stay put for as long as the reader lives. It can hold a private copy of in-memory
// bytes instead (tests, fuzzing), so a reader has one parser for both.
#ifndef GEMINI_CSRC_COMMON_MAPPED_FILE_H_
#define GEMINI_CSRC_COMMON_MAPPED_FILE_H_

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace gemini {

// Why Open failed. what() is "<path>: <detail>"; the parts are there for readers that put
// the path into their own message format (and so keep their messages as they were).
class MappedFileError : public std::runtime_error {
 public:
  MappedFileError(const std::string& path, const std::string& step, const std::string& reason);
  const std::string& path() const { return path_; }
  const std::string& step() const { return step_; }     // "open", "stat" or "mmap"
  const std::string& reason() const { return reason_; }  // strerror(errno)
  std::string detail() const { return "cannot " + step_ + ": " + reason_; }

 private:
  std::string path_;
  std::string step_;
  std::string reason_;
};

class MappedFile {
 public:
  // Maps `path` read-only; the descriptor is closed again before returning. An empty file
  // maps nothing (mmap refuses length 0): data() is null, size() 0, and the reader's own
  // size checks refuse it. Throws MappedFileError when open, fstat or mmap fails, and (step
  // "open", reason "not a regular file (a FIFO)" etc.) for anything but a regular file:
  // FIFOs, devices, sockets and directories are refused without blocking.
  static MappedFile Open(const std::string& path);
  // A private copy of `bytes`, 8-aligned like a mapping's start, so views the readers take in
  // place (token ids at 8-aligned record offsets) stay aligned for in-memory input too.
  static MappedFile Copy(const std::string& bytes);

  MappedFile() = default;
  ~MappedFile();
  // Move-only: one owner unmaps. A moved-from MappedFile is empty.
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  void Release();

  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
  void* map_ = nullptr;          // the mapping (Open) ...
  std::vector<uint64_t> copy_;   // ... or the copy (Copy); a move keeps its buffer in place.
};

}  // namespace gemini

#endif  // GEMINI_CSRC_COMMON_MAPPED_FILE_H_
