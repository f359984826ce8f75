#include "csrc/loader/shard.h"

#include <cstring>
#include <sstream>

#include "csrc/common/crc32c.h"
#include "csrc/common/mapped_file.h"

namespace gemini::loader {
namespace {

// Unaligned-safe little-endian loads (x86-64 is little-endian; memcpy avoids UB on bad offsets).
template <typename T>
T Load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

std::string Hex(uint32_t v) {
  std::ostringstream s;
  s << "0x" << std::hex << v;
  return s.str();
}

}  // namespace

void Shard::Fail(const std::string& where, uint64_t offset, const std::string& what) const {
  std::ostringstream s;
  s << "shard '" << path_ << "': " << where << " at byte offset " << offset << ": " << what;
  throw ShardError(s.str());
}

std::shared_ptr<Shard> Shard::Open(const std::string& path, bool verify) {
  std::shared_ptr<Shard> s(new Shard());
  s->path_ = path;
  try {
    s->bytes_ = MappedFile::Open(path);
  } catch (const MappedFileError& e) {
    // Shard messages have always said "mmap failed"; "cannot open/stat" read as MappedFile's.
    s->Fail("file", 0, e.step() == "mmap" ? "mmap failed: " + e.reason() : e.detail());
  }
  s->Parse(verify);
  return s;
}

std::shared_ptr<Shard> Shard::FromBytes(const std::string& bytes, const std::string& name,
                                        bool verify) {
  std::shared_ptr<Shard> s(new Shard());
  s->path_ = name;
  s->bytes_ = MappedFile::Copy(bytes);
  s->Parse(verify);
  return s;
}

void Shard::Parse(bool verify) {
  const uint8_t* h = bytes_.data();
  const uint64_t size = bytes_.size();
  if (size < kHeaderSize)
    Fail("header", 0, "truncated: file has " + std::to_string(size) + " bytes, header needs 64");
  if (std::memcmp(h, kMagic, 8) != 0) Fail("header", 0, "bad magic (expected 'GEMSHARD')");
  const uint32_t version = Load<uint32_t>(h + 8);
  if (version != kVersion)
    Fail("header", 8, "unsupported version " + std::to_string(version) + " (reader knows 1)");
  const uint32_t header_crc = Load<uint32_t>(h + 60);
  const uint32_t got_header_crc = Crc32c(h, 60);
  if (header_crc != got_header_crc)
    Fail("header", 60, "header CRC mismatch (stored " + Hex(header_crc) + ", computed " +
                           Hex(got_header_crc) + ")");
  if (Load<uint32_t>(h + 12) != kHeaderSize)
    Fail("header", 12, "header_size " + std::to_string(Load<uint32_t>(h + 12)) + " != 64");
  const uint64_t n = Load<uint64_t>(h + 16);
  const uint64_t index_offset = Load<uint64_t>(h + 24);
  const uint64_t file_size = Load<uint64_t>(h + 32);
  vocab_size_ = Load<uint32_t>(h + 40);
  const uint32_t index_crc = Load<uint32_t>(h + 44);
  if (file_size != size) {
    Fail("file", size < file_size ? size : file_size,
         (size < file_size ? "truncated: " : "trailing bytes: ") + std::string("header says ") +
             std::to_string(file_size) + " bytes, file has " + std::to_string(size));
  }
  if (index_offset < kHeaderSize || index_offset % 8 != 0 || index_offset > size ||
      n > (size - index_offset) / kIndexEntrySize ||
      index_offset + n * kIndexEntrySize != size)
    Fail("header", 24, "index (offset " + std::to_string(index_offset) + ", " +
                           std::to_string(n) + " entries) does not end at the file end " +
                           std::to_string(size));
  const uint8_t* idx = bytes_.data() + index_offset;
  const uint32_t got_index_crc = Crc32c(idx, n * kIndexEntrySize);
  if (got_index_crc != index_crc)
    Fail("index", index_offset, "index CRC mismatch (stored " + Hex(index_crc) +
                                    ", computed " + Hex(got_index_crc) + ")");
  records_.resize(n);
  for (uint64_t i = 0; i < n; ++i) {
    const uint8_t* e = idx + i * kIndexEntrySize;
    Record& r = records_[i];
    r.offset = Load<uint64_t>(e);
    r.length = Load<uint64_t>(e + 8);
    r.kind = Load<uint32_t>(e + 16);
    r.crc = Load<uint32_t>(e + 20);
    const std::string where = "record " + std::to_string(i);
    if (r.offset < kHeaderSize || r.offset % 8 != 0 || r.offset > index_offset ||
        r.length > index_offset - r.offset)
      Fail(where, index_offset + i * kIndexEntrySize,
           "record bytes [" + std::to_string(r.offset) + ", +" + std::to_string(r.length) +
               ") outside the data area [64, " + std::to_string(index_offset) + ")");
    const uint8_t* p = bytes_.data() + r.offset;
    if (verify) {
      const uint32_t got = Crc32c(p, r.length);
      if (got != r.crc)
        Fail(where, r.offset,
             "CRC mismatch (stored " + Hex(r.crc) + ", computed " + Hex(got) + ")");
    }
    if (r.kind == kTokensU16 || r.kind == kTokensU32) {
      const uint32_t w = r.kind == kTokensU16 ? 2 : 4;
      if (r.length % w != 0)
        Fail(where, r.offset, "length " + std::to_string(r.length) +
                                  " is not a multiple of the token width " + std::to_string(w));
      r.tokens = TokenView{p, w, r.length / w};
    } else if (r.kind == kMultimodal) {
      if (r.length < 16) Fail(where, r.offset, "multimodal record shorter than its 16-byte head");
      const uint32_t w = Load<uint32_t>(p), t = Load<uint32_t>(p + 4), m = Load<uint32_t>(p + 8);
      if (w != 2 && w != 4) Fail(where, r.offset, "token_width " + std::to_string(w));
      const uint64_t tok_off = 16 + kMediaDescSize * m;
      if (tok_off > r.length || (r.length - tok_off) / w < t)
        Fail(where, r.offset + 4, "tokens/media descriptors (" + std::to_string(t) + ", " +
                                      std::to_string(m) + ") overrun the record length " +
                                      std::to_string(r.length));
      r.tokens = TokenView{p + tok_off, w, t};
      r.num_media = m;
      if (tok_off % w != 0) Fail(where, r.offset, "misaligned tokens");
      media(i);  // Validates every descriptor (throws on a bad one).
    } else {
      Fail(where, index_offset + i * kIndexEntrySize + 16,
           "unknown record kind " + std::to_string(r.kind));
    }
    // Ids are checked with the CRC (both read every byte): an id past the vocabulary would
    // index past the embedding table.
    if (verify) CheckTokenIds(i, vocab_size_, "the shard's vocab_size");
  }
}

void Shard::BadTokenId(uint64_t i, uint64_t position, uint32_t id, uint32_t limit,
                       const std::string& limit_name) const {
  const Record& r = Get(i);
  const uint64_t at = static_cast<const uint8_t*>(r.tokens.data) - bytes_.data() +
                      position * r.tokens.width;
  Fail("record " + std::to_string(i), at,
       "token id " + std::to_string(id) + " at position " + std::to_string(position) +
           " is >= " + limit_name + " " + std::to_string(limit));
}

void Shard::CheckTokenIds(uint64_t i, uint32_t limit, const std::string& limit_name) const {
  if (limit == 0) return;
  const TokenView& t = Get(i).tokens;
  for (uint64_t j = 0; j < t.count; ++j)
    if (t.At(j) >= limit) BadTokenId(i, j, t.At(j), limit, limit_name);
}

const Shard::Record& Shard::Get(uint64_t i) const {
  if (i >= records_.size())
    Fail("record " + std::to_string(i), kHeaderSize + 16,
         "index out of range (shard has " + std::to_string(records_.size()) + " records)");
  return records_[i];
}

std::vector<MediaView> Shard::media(uint64_t i) const {
  const Record& r = Get(i);
  std::vector<MediaView> out;
  if (r.kind != kMultimodal) return out;
  const uint8_t* p = bytes_.data() + r.offset;
  const std::string where = "record " + std::to_string(i);
  for (uint32_t k = 0; k < r.num_media; ++k) {
    const uint8_t* d = p + 16 + kMediaDescSize * k;
    const uint64_t at = r.offset + 16 + kMediaDescSize * k;
    MediaView v;
    v.modality = Load<uint32_t>(d);
    v.dtype = Load<uint32_t>(d + 4);
    v.placement = Load<uint32_t>(d + 8);
    v.num_placeholders = Load<uint32_t>(d + 12);
    v.ndim = Load<uint32_t>(d + 16);
    for (int j = 0; j < 4; ++j) v.shape[j] = Load<uint32_t>(d + 20 + 4 * j);
    const uint64_t off = Load<uint64_t>(d + 40), len = Load<uint64_t>(d + 48);
    const std::string item = where + " media " + std::to_string(k);
    if (v.modality < 1 || v.modality > 3)
      Fail(item, at, "unknown modality " + std::to_string(v.modality));
    if (v.dtype < 1 || v.dtype > 4) Fail(item, at + 4, "unknown dtype " + std::to_string(v.dtype));
    if (static_cast<uint64_t>(v.placement) + v.num_placeholders > r.tokens.count)
      Fail(item, at + 8, "placement " + std::to_string(v.placement) + "+" +
                             std::to_string(v.num_placeholders) + " outside the " +
                             std::to_string(r.tokens.count) + " tokens");
    if (v.ndim < 1 || v.ndim > 4) Fail(item, at + 16, "ndim " + std::to_string(v.ndim));
    static constexpr uint64_t kItem[5] = {0, 1, 2, 4, 1};
    // Element count with overflow guard (each dim < 2^32, at most 4 dims).
    unsigned __int128 elems = 1;
    for (uint32_t j = 0; j < v.ndim; ++j) elems *= v.shape[j];
    if (v.dtype == kEncoded && v.ndim != 1) Fail(item, at + 16, "encoded payload must be 1-D");
    if (elems * kItem[v.dtype] != len)
      Fail(item, at + 48, "payload_length " + std::to_string(len) + " != shape x itemsize");
    if (off % 8 != 0 || off > r.length || len > r.length - off)
      Fail(item, at + 40, "payload [" + std::to_string(off) + ", +" + std::to_string(len) +
                              ") outside the record (" + std::to_string(r.length) + " bytes)");
    v.data = p + off;
    v.length = len;
    out.push_back(v);
  }
  return out;
}

void Shard::VerifyRecord(uint64_t i) const {
  const Record& r = Get(i);
  const uint32_t got = Crc32c(bytes_.data() + r.offset, r.length);
  if (got != r.crc)
    Fail("record " + std::to_string(i), r.offset,
         "CRC mismatch (stored " + Hex(r.crc) + ", computed " + Hex(got) + ")");
  CheckTokenIds(i, vocab_size_, "the shard's vocab_size");
}

}  // namespace gemini::loader
