#include "csrc/common/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

namespace gemini {
namespace {

const char* FileTypeName(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "an unknown file type";
}

// Refuses anything but a regular file, naming what it is.
void CheckRegular(const std::string& path, mode_t mode) {
  if (!S_ISREG(mode))
    throw MappedFileError(path, "open",
                          std::string("not a regular file (") + FileTypeName(mode) + ")");
}

}  // namespace

MappedFileError::MappedFileError(const std::string& path, const std::string& step,
                                 const std::string& reason)
    : std::runtime_error(path + ": cannot " + step + ": " + reason),
      path_(path),
      step_(step),
      reason_(reason) {}

MappedFile MappedFile::Open(const std::string& path) {
  MappedFile f;
  // A FIFO, device or directory is refused before it is opened (opening a FIFO for reading
  // waits for a writer; opening a device can have effects). The open below is O_NONBLOCK and
  // its fstat checks again, so a path swapped in between cannot block either.
  struct stat st;
  if (::stat(path.c_str(), &st) == 0) CheckRegular(path, st.st_mode);
  // O_CLOEXEC: a thread forking a child between open and close must not leak the descriptor.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) throw MappedFileError(path, "open", std::strerror(errno));
  if (::fstat(fd, &st) != 0) {
    int e = errno;  // close() may overwrite errno.
    ::close(fd);
    throw MappedFileError(path, "stat", std::strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    CheckRegular(path, st.st_mode);
  }
  f.size_ = static_cast<uint64_t>(st.st_size);
  if (f.size_ > 0) {
    void* m = ::mmap(nullptr, f.size_, PROT_READ, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
      int e = errno;
      ::close(fd);
      throw MappedFileError(path, "mmap", std::strerror(e));
    }
    f.map_ = m;
    f.data_ = static_cast<const uint8_t*>(m);
  }
  ::close(fd);  // The mapping keeps the file's pages; the descriptor is not needed.
  return f;
}

MappedFile MappedFile::Copy(const std::string& bytes) {
  MappedFile f;
  // One word more than needed, so the buffer is never empty and data() is never null.
  f.copy_.resize((bytes.size() + 7) / 8 + 1);
  std::memcpy(f.copy_.data(), bytes.data(), bytes.size());
  f.data_ = reinterpret_cast<const uint8_t*>(f.copy_.data());
  f.size_ = bytes.size();
  return f;
}

MappedFile::~MappedFile() { Release(); }

MappedFile::MappedFile(MappedFile&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      map_(std::exchange(other.map_, nullptr)),
      copy_(std::move(other.copy_)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    Release();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    map_ = std::exchange(other.map_, nullptr);
    copy_ = std::move(other.copy_);
    other.copy_.clear();
  }
  return *this;
}

void MappedFile::Release() {
  if (map_ != nullptr) ::munmap(map_, size_);
  map_ = nullptr;
  data_ = nullptr;
  size_ = 0;
  copy_.clear();
}

}  // namespace gemini
