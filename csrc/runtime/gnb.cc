#include "csrc/runtime/gnb.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <sstream>

#include "csrc/common/crc32c.h"
#include "csrc/common/mapped_file.h"

namespace gemini::runtime {
namespace {

constexpr char kMagic[8] = {'G', 'E', 'M', 'I', 'N', 'A', 'N', 'O'};
constexpr uint32_t kVersion = 1;
constexpr uint64_t kPrefixBytes = 48;
constexpr uint64_t kAlign = 64;

[[noreturn]] void Fail(const std::string& where, const std::string& msg) {
  throw FormatError(where + ": " + msg);
}

// Bounds-checked little-endian cursor over the header.
class Cursor {
 public:
  Cursor(const uint8_t* p, uint64_t n, const std::string& where) : p_(p), n_(n), where_(where) {}
  void Need(uint64_t k, const char* field) const {
    if (k > n_ - pos_)
      Fail(where_, std::string("header ends inside field '") + field + "' at byte " +
                       std::to_string(pos_) + " (header_bytes=" + std::to_string(n_ + 4) + ")");
  }
  template <typename T>
  T Read(const char* field) {
    Need(sizeof(T), field);
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string Bytes(uint64_t k, const char* field) {
    Need(k, field);
    std::string s(reinterpret_cast<const char*>(p_ + pos_), k);
    pos_ += k;
    return s;
  }
  uint64_t pos() const { return pos_; }

 private:
  const uint8_t* p_;
  uint64_t n_;
  uint64_t pos_ = 0;
  const std::string& where_;
};

// a * b, or a refusal when the product does not fit 64 bits.
uint64_t Mul(uint64_t a, uint64_t b, const TensorView& t, const std::string& where) {
  uint64_t r;
  if (__builtin_mul_overflow(a, b, &r))
    Fail(where, "tensor '" + t.name + "': shape's byte count overflows 64 bits");
  return r;
}

uint64_t ExpectedBytes(const TensorView& t, const std::string& where) {
  uint64_t n = 1;
  for (uint64_t d : t.shape) n = Mul(n, d, t, where);
  switch (t.dtype) {
    case kF32: return Mul(n, 4, t, where);
    case kF16:
    case kBF16: return Mul(n, 2, t, where);
    case kInt4F16:
    case kInt4BF16: {
      if (t.shape.size() != 2) Fail(where, "tensor '" + t.name + "': int4 tensors are 2-D [N, K], ndim=" + std::to_string(t.shape.size()));
      uint32_t g = t.group_size;
      if (g != 32 && g != 64 && g != 128)
        Fail(where, "tensor '" + t.name + "': group_size=" + std::to_string(g) + " not in {32, 64, 128}");
      const uint64_t rows = t.shape[0], kp = (t.shape[1] + g - 1) / g * g;  // dims <= 2^32
      return Mul(rows, kp / 2 + 2 * (kp / g), t, where);
    }
  }
  Fail(where, "tensor '" + t.name + "': dtype=" + std::to_string(t.dtype) + " unknown (0..4)");
}

// Refuses NaN or infinite values where the runtime multiplies by them: f32 tensors (norm
// scales) and the f16/bf16 scales of int4 tensors. Read alongside the CRC (same bytes).
void CheckFinite(const TensorView& t, const std::string& where) {
  if (t.dtype == kF32) {
    for (uint64_t i = 0; i < t.nbytes / 4; ++i) {
      uint32_t bits;
      std::memcpy(&bits, t.data + 4 * i, 4);
      if ((bits & 0x7F800000u) == 0x7F800000u)
        Fail(where, "tensor '" + t.name + "': element " + std::to_string(i) + " is NaN or infinite");
    }
  } else if (t.dtype == kInt4F16 || t.dtype == kInt4BF16) {
    const uint64_t kp = (t.shape[1] + t.group_size - 1) / t.group_size * t.group_size;
    const uint64_t packed = t.shape[0] * kp / 2, scales = (t.nbytes - packed) / 2;
    const uint16_t mask = t.dtype == kInt4F16 ? 0x7C00 : 0x7F80;
    for (uint64_t i = 0; i < scales; ++i) {
      uint16_t bits;
      std::memcpy(&bits, t.data + packed + 2 * i, 2);
      if ((bits & mask) == mask)
        Fail(where, "tensor '" + t.name + "': scale " + std::to_string(i) + " is NaN or infinite");
    }
  }
}

bool EndsWith(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// Why a well-known tensor name is not expected (or nothing for an unknown name).
std::string UnusedHint(const std::string& name, const ModelConfig& c) {
  if (name == "unembed") return " (tie_embeddings is true)";
  if (!c.qk_norm && (EndsWith(name, ".q_norm") || EndsWith(name, ".k_norm")))
    return " (qk_norm is false)";
  if (name.rfind("layers.", 0) == 0) return " (n_layers=" + std::to_string(c.n_layers) + ")";
  return " (unknown name)";
}

std::string ShapeText(const std::vector<uint64_t>& shape) {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << "]";
  return s.str();
}

}  // namespace

std::string FormatError::Printable(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c >= 0x20 && c < 0x7F) {
      out.push_back(static_cast<char>(c));
    } else {
      char buf[5];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    }
  }
  return out;
}

std::unique_ptr<GnbFile> GnbFile::Open(const std::string& path, bool check_data_crc) {
  std::unique_ptr<GnbFile> f(new GnbFile());
  f->path_ = path;
  try {
    f->bytes_ = MappedFile::Open(path);
  } catch (const MappedFileError& e) {
    Fail(path, e.detail());  // As FormatError: the runtime's one exception for bad input.
  }
  f->Parse(check_data_crc);
  return f;
}

std::unique_ptr<GnbFile> GnbFile::FromBytes(const std::string& bytes, const std::string& name,
                                            bool check_data_crc) {
  std::unique_ptr<GnbFile> f(new GnbFile());
  f->path_ = name;
  f->bytes_ = MappedFile::Copy(bytes);
  f->Parse(check_data_crc);
  return f;
}

const TensorView& GnbFile::Get(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) Fail(path_, "missing tensor '" + name + "'");
  return tensors_[it->second];
}

void GnbFile::Parse(bool check_data_crc) {
  const std::string& w = path_;
  const uint8_t* base = bytes_.data();
  const uint64_t size = bytes_.size();
  if (size < kPrefixBytes)
    Fail(w, "file is " + std::to_string(size) + " bytes, shorter than the 48-byte header prefix (truncated?)");
  if (std::memcmp(base, kMagic, 8) != 0) Fail(w, "magic is not \"GEMINANO\" (not a .gnb file)");
  auto u32 = [&](uint64_t off) { uint32_t v; std::memcpy(&v, base + off, 4); return v; };
  auto u64 = [&](uint64_t off) { uint64_t v; std::memcpy(&v, base + off, 8); return v; };
  uint32_t version = u32(8);
  if (version != kVersion)
    Fail(w, "version=" + std::to_string(version) + ", this runtime reads version " + std::to_string(kVersion));
  uint64_t header_bytes = u32(12), file_bytes = u64(16), config_bytes = u32(24);
  uint32_t tok_kind = u32(28);
  uint64_t tok_bytes = u64(32);
  uint32_t n_tensors = u32(40);
  if (u32(44) != 0) Fail(w, "reserved=" + std::to_string(u32(44)) + ", must be 0");
  if (file_bytes != size)
    Fail(w, "file_bytes=" + std::to_string(file_bytes) + " but the file has " + std::to_string(size) +
                " bytes (truncated or extended)");
  if (header_bytes < kPrefixBytes + 4 || header_bytes > size)
    Fail(w, "header_bytes=" + std::to_string(header_bytes) + " out of range [52, " + std::to_string(size) + "]");
  uint32_t stored = u32(header_bytes - 4);
  uint32_t computed = Crc32c(base, header_bytes - 4);
  if (stored != computed) {
    char buf[96];
    std::snprintf(buf, sizeof(buf), "header CRC-32C mismatch: stored 0x%08x, computed 0x%08x", stored, computed);
    Fail(w, buf);
  }
  if (tok_kind > kTokBpe) Fail(w, "tokenizer_kind=" + std::to_string(tok_kind) + " unknown (0..2)");
  tok_kind_ = static_cast<TokenizerKind>(tok_kind);
  Cursor cur(base + kPrefixBytes, header_bytes - 4 - kPrefixBytes, w);
  std::string cfg_json = cur.Bytes(config_bytes, "config");
  tokenizer_ = cur.Bytes(tok_bytes, "tokenizer");
  config_ = ParseConfigJson(cfg_json, w);
  ValidateTokenizer(tok_kind_, tokenizer_, config_, w);
  if (n_tensors > 1000000) Fail(w, "n_tensors=" + std::to_string(n_tensors) + " implausible");
  uint64_t data_start = (header_bytes + kAlign - 1) / kAlign * kAlign;
  for (uint32_t i = 0; i < n_tensors; ++i) {
    TensorView t;
    uint16_t nlen = cur.Read<uint16_t>("tensor name_len");
    t.name = cur.Bytes(nlen, "tensor name");
    if (t.name.empty()) Fail(w, "tensor " + std::to_string(i) + " has an empty name");
    uint8_t dtype = cur.Read<uint8_t>("tensor dtype");
    uint8_t ndim = cur.Read<uint8_t>("tensor ndim");
    t.group_size = cur.Read<uint32_t>("tensor group_size");
    if (dtype > kInt4BF16)
      Fail(w, "tensor '" + t.name + "': dtype=" + std::to_string(dtype) + " unknown (0..4)");
    if (ndim < 1 || ndim > 4)
      Fail(w, "tensor '" + t.name + "': ndim=" + std::to_string(ndim) + " not in 1..4");
    t.dtype = static_cast<DType>(dtype);
    if (dtype != kInt4F16 && dtype != kInt4BF16 && t.group_size != 0)
      Fail(w, "tensor '" + t.name + "': group_size=" + std::to_string(t.group_size) + " on a non-int4 tensor (must be 0)");
    for (int d = 0; d < ndim; ++d) {
      uint64_t v = cur.Read<uint64_t>("tensor shape");
      if (v == 0 || v > (1ULL << 32))
        Fail(w, "tensor '" + t.name + "': shape[" + std::to_string(d) + "]=" + std::to_string(v) + " out of range");
      t.shape.push_back(v);
    }
    uint64_t offset = cur.Read<uint64_t>("tensor offset");
    t.nbytes = cur.Read<uint64_t>("tensor nbytes");
    t.crc = cur.Read<uint32_t>("tensor crc32c");
    if (offset % kAlign != 0 || offset < data_start)
      Fail(w, "tensor '" + t.name + "': offset=" + std::to_string(offset) + " not 64-byte aligned inside the data section");
    if (t.nbytes > size || offset > size - t.nbytes)
      Fail(w, "tensor '" + t.name + "': data [" + std::to_string(offset) + ", +" + std::to_string(t.nbytes) +
                  ") runs past the end of the file (" + std::to_string(size) + " bytes)");
    uint64_t want = ExpectedBytes(t, w);
    if (want != t.nbytes)
      Fail(w, "tensor '" + t.name + "': nbytes=" + std::to_string(t.nbytes) + " but its dtype and shape need " + std::to_string(want));
    t.data = base + offset;
    if (check_data_crc) {
      uint32_t c = Crc32c(t.data, t.nbytes);
      if (c != t.crc) {
        char buf[128];
        std::snprintf(buf, sizeof(buf), ": data CRC-32C mismatch (stored 0x%08x, computed 0x%08x)", t.crc, c);
        Fail(w, "tensor '" + t.name + "'" + buf);
      }
      CheckFinite(t, w);
    }
    if (index_.count(t.name)) Fail(w, "tensor '" + t.name + "' appears twice in the table");
    index_[t.name] = tensors_.size();
    tensors_.push_back(std::move(t));
  }
  if (cur.pos() != header_bytes - 4 - kPrefixBytes)
    Fail(w, "tensor table ends at byte " + std::to_string(cur.pos() + kPrefixBytes) + " but header_bytes says " + std::to_string(header_bytes - 4));
  CheckNoAliasing();
  CheckModelShapes();
}

void GnbFile::CheckNoAliasing() const {
  std::vector<const TensorView*> by_offset;
  for (const TensorView& t : tensors_) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const TensorView* a, const TensorView* b) { return a->data < b->data; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const TensorView& a = *by_offset[i - 1];
    const TensorView& b = *by_offset[i];
    if (b.data < a.data + a.nbytes)
      Fail(path_, "tensors '" + a.name + "' and '" + b.name + "' overlap: data [" +
                      std::to_string(a.data - bytes_.data()) + ", +" + std::to_string(a.nbytes) +
                      ") and [" + std::to_string(b.data - bytes_.data()) + ", +" +
                      std::to_string(b.nbytes) + ")");
  }
}

void GnbFile::CheckModelShapes() const {
  const ModelConfig& c = config_;
  const std::vector<TensorSpec> spec = ExpectedTensors(c);
  std::map<std::string, const TensorSpec*> want;
  for (const TensorSpec& t : spec) want[t.name] = &t;
  for (const TensorView& t : tensors_)
    if (!want.count(t.name))
      Fail(path_, "tensor '" + t.name + "' is not part of the model the config describes" +
                      UnusedHint(t.name, c));
  for (const TensorSpec& s : spec) {
    auto it = index_.find(s.name);
    if (it == index_.end())
      Fail(path_, "missing tensor '" + s.name + "' (the config's model has " +
                      std::to_string(spec.size()) + " tensors, the file " +
                      std::to_string(tensors_.size()) + ")");
    const TensorView& t = tensors_[it->second];
    const bool is_int4 = t.dtype == kInt4F16 || t.dtype == kInt4BF16;
    if (s.int4 != is_int4 || (!s.int4 && t.dtype != kF32))
      Fail(path_, "tensor '" + s.name + "': dtype=" + std::to_string(t.dtype) + ", expected " +
                      (s.int4 ? "int4 (3|4)" : "f32 (0)"));
    if (t.shape != s.shape)
      Fail(path_, "tensor '" + s.name + "': shape " + ShapeText(t.shape) +
                      " but the config needs " + ShapeText(s.shape));
    if (s.int4 && static_cast<int>(t.group_size) != c.group_size)
      Fail(path_, "tensor '" + s.name + "': group_size=" + std::to_string(t.group_size) +
                      " but config group_size=" + std::to_string(c.group_size));
  }
}

}  // namespace gemini::runtime
