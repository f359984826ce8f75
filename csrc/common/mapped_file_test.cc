// MappedFile on real files in the test's temp dir: bytes as written, an empty file, a missing
// file's error naming the path, a directory, a FIFO and a device refused without
// blocking, in-memory copies and moves. Prints the plain
// "N passed, N failed".
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

#include "csrc/common/mapped_file.h"

namespace {
int passed = 0, failed = 0;
void Expect(bool ok, const std::string& what) {
  if (ok) { ++passed; return; }
  ++failed;
  std::printf("FAIL %s\n", what.c_str());
}

std::string TempDir() {
  const char* d = std::getenv("TEST_TMPDIR");  // Set by bazel test; /tmp when run by hand.
  return d != nullptr ? d : "/tmp";
}

void Write(const std::string& path, const std::string& bytes) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr || std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size()) {
    std::printf("cannot write %s\n", path.c_str());
    std::exit(2);
  }
  std::fclose(f);
}

bool SameBytes(const gemini::MappedFile& m, const std::string& want) {
  return m.size() == want.size() &&
         (want.empty() || std::memcmp(m.data(), want.data(), want.size()) == 0);
}
}  // namespace

int main() {
  using gemini::MappedFile;
  using gemini::MappedFileError;
  const std::string dir = TempDir();

  std::string bytes;
  for (int i = 0; i < 10000; ++i) bytes.push_back(static_cast<char>((i * 131 + 7) & 0xFF));
  const std::string path = dir + "/mapped_file_test.bin";
  Write(path, bytes);
  {
    MappedFile m = MappedFile::Open(path);
    Expect(SameBytes(m, bytes), "mapped bytes equal the written bytes");
    Expect(reinterpret_cast<uintptr_t>(m.data()) % 8 == 0, "mapping is 8-aligned");

    const uint8_t* p = m.data();
    MappedFile moved(std::move(m));
    Expect(moved.data() == p && SameBytes(moved, bytes), "move keeps the mapping in place");
    Expect(m.data() == nullptr && m.size() == 0, "moved-from is empty");
    MappedFile other = MappedFile::Copy("abc");
    other = std::move(moved);  // Drops the copy, takes the mapping.
    Expect(other.data() == p && SameBytes(other, bytes), "move-assign takes the mapping");
  }

  const std::string empty = dir + "/mapped_file_test_empty.bin";
  Write(empty, "");
  {
    MappedFile m = MappedFile::Open(empty);
    Expect(m.size() == 0 && m.data() == nullptr, "empty file maps nothing");
  }

  const std::string missing = dir + "/no_such_dir/missing.bin";
  try {
    MappedFile::Open(missing);
    Expect(false, "missing file throws");
  } catch (const MappedFileError& e) {
    Expect(e.path() == missing && e.step() == "open", "missing file: path and step");
    Expect(std::string(e.what()) == missing + ": cannot open: " + std::strerror(ENOENT),
           std::string("missing file message: ") + e.what());
    Expect(e.detail() == std::string("cannot open: ") + std::strerror(ENOENT), "detail");
  }

  // Non-regular files are refused up front, naming what they are; a FIFO without a writer
  // must not block (a hang here is the bug: the test's timeout catches it).
  const std::string sub = dir + "/mapped_file_test_dir";
  ::mkdir(sub.c_str(), 0755);
  const std::string fifo = dir + "/mapped_file_test.fifo";
  ::unlink(fifo.c_str());
  if (::mkfifo(fifo.c_str(), 0644) != 0) {
    std::printf("cannot mkfifo %s\n", fifo.c_str());
    return 2;
  }
  const std::pair<std::string, std::string> special[] = {
      {sub, "a directory"}, {fifo, "a FIFO"}, {"/dev/null", "a character device"}};
  for (const auto& [p, kind] : special) {
    try {
      MappedFile::Open(p);
      Expect(false, p + " is refused");
    } catch (const MappedFileError& e) {
      Expect(e.path() == p && e.step() == "open", p + ": path and step");
      Expect(std::string(e.what()) == p + ": cannot open: not a regular file (" + kind + ")",
             std::string("non-regular file message: ") + e.what());
    }
  }

  {
    MappedFile c = MappedFile::Copy(bytes);
    Expect(SameBytes(c, bytes), "copy holds the bytes");
    Expect(reinterpret_cast<uintptr_t>(c.data()) % 8 == 0, "copy is 8-aligned");
    MappedFile e = MappedFile::Copy("");
    Expect(e.size() == 0 && e.data() != nullptr, "empty copy: size 0, data non-null");
    const uint8_t* p = c.data();
    MappedFile moved(std::move(c));
    Expect(moved.data() == p && SameBytes(moved, bytes), "move keeps the copy's buffer");
  }

  std::printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
