#include "csrc/runtime/gguf_reader.h"

#include <cstring>

namespace gemini::runtime {
namespace {

// Elements per block and bytes per block of the ggml types whose size we know.
struct TypeSize { uint32_t type; const char* name; uint32_t block, bytes; };
constexpr TypeSize kTypes[] = {
    {0, "F32", 1, 4},      {1, "F16", 1, 2},       {2, "Q4_0", 32, 18},   {3, "Q4_1", 32, 20},
    {6, "Q5_0", 32, 22},   {7, "Q5_1", 32, 24},    {8, "Q8_0", 32, 34},   {9, "Q8_1", 32, 36},
    {10, "Q2_K", 256, 84}, {11, "Q3_K", 256, 110}, {12, "Q4_K", 256, 144}, {13, "Q5_K", 256, 176},
    {14, "Q6_K", 256, 210}, {15, "Q8_K", 256, 292}, {24, "I8", 1, 1},     {25, "I16", 1, 2},
    {26, "I32", 1, 4},     {27, "I64", 1, 8},      {28, "F64", 1, 8},     {30, "BF16", 1, 2},
};

const TypeSize* FindType(uint32_t t) {
  for (const TypeSize& ts : kTypes)
    if (ts.type == t) return &ts;
  return nullptr;
}

[[noreturn]] void Fail(const std::string& where, const std::string& msg) {
  throw FormatError(where + msg);
}

// Bounds-checked little-endian cursor over the file; `what` names the field being read.
class Cursor {
 public:
  Cursor(const uint8_t* p, uint64_t n, std::string where) : p_(p), n_(n), where_(std::move(where)) {}
  uint64_t pos() const { return pos_; }
  void Need(uint64_t k, const std::string& what) {
    if (k > n_ - pos_)
      Fail(where_, what + ": truncated (needs " + std::to_string(k) + " bytes at offset " +
                       std::to_string(pos_) + ", file has " + std::to_string(n_) + ")");
  }
  template <class T>
  T Read(const std::string& what) {
    Need(sizeof(T), what);
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string String(const std::string& what) {
    uint64_t len = Read<uint64_t>(what + " length");
    if (len > (1u << 26)) Fail(where_, what + ": string length " + std::to_string(len) + " is implausible");
    Need(len, what);
    std::string s(reinterpret_cast<const char*>(p_ + pos_), len);
    pos_ += len;
    return s;
  }

 private:
  const uint8_t* p_;
  uint64_t n_, pos_ = 0;
  std::string where_;
};

enum ValueType : uint32_t {
  kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7, kStr = 8,
  kArr = 9, kU64 = 10, kI64 = 11, kF64 = 12,
};

// Reads one scalar of `type` into v (numbers, bools, strings).
void ReadScalar(Cursor* c, uint32_t type, const std::string& what, GgufValue* v, const std::string& where) {
  switch (type) {
    case kU8: v->kind = GgufValue::kInt; v->i = c->Read<uint8_t>(what); return;
    case kI8: v->kind = GgufValue::kInt; v->i = c->Read<int8_t>(what); return;
    case kU16: v->kind = GgufValue::kInt; v->i = c->Read<uint16_t>(what); return;
    case kI16: v->kind = GgufValue::kInt; v->i = c->Read<int16_t>(what); return;
    case kU32: v->kind = GgufValue::kInt; v->i = c->Read<uint32_t>(what); return;
    case kI32: v->kind = GgufValue::kInt; v->i = c->Read<int32_t>(what); return;
    case kU64: v->kind = GgufValue::kInt; v->i = static_cast<int64_t>(c->Read<uint64_t>(what)); return;
    case kI64: v->kind = GgufValue::kInt; v->i = c->Read<int64_t>(what); return;
    case kF32: v->kind = GgufValue::kFloat; v->f = c->Read<float>(what); return;
    case kF64: v->kind = GgufValue::kFloat; v->f = c->Read<double>(what); return;
    case kBool: {
      uint8_t b = c->Read<uint8_t>(what);
      if (b > 1) Fail(where, what + ": bool value " + std::to_string(b) + " is not 0 or 1");
      v->kind = GgufValue::kBool; v->i = b;
      return;
    }
    case kStr: v->kind = GgufValue::kString; v->s = c->String(what); return;
    default: Fail(where, what + ": unknown value type " + std::to_string(type));
  }
}

}  // namespace

const char* GgmlTypeName(uint32_t type) {
  const TypeSize* t = FindType(type);
  return t != nullptr ? t->name : "unknown";
}

std::unique_ptr<GgufFile> GgufFile::Open(const std::string& path) {
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->path_ = path;
  try {
    f->bytes_ = MappedFile::Open(path);
  } catch (const MappedFileError& e) {
    Fail(path + ": ", e.detail());
  }
  f->Parse();
  return f;
}

std::unique_ptr<GgufFile> GgufFile::FromBytes(const std::string& bytes, const std::string& name) {
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->path_ = name;
  f->bytes_ = MappedFile::Copy(bytes);
  f->Parse();
  return f;
}

void GgufFile::Parse() {
  const std::string where = Where();
  const uint64_t size = bytes_.size();
  Cursor c(bytes_.data(), size, where);
  if (size < 24) Fail(where, "file of " + std::to_string(size) + " bytes is shorter than the 24-byte GGUF header");
  char magic[4];
  std::memcpy(magic, bytes_.data(), 4);
  if (std::memcmp(magic, "GGUF", 4) != 0) Fail(where, "magic '" + std::string(magic, 4) + "' is not 'GGUF'");
  c.Read<uint32_t>("magic");
  version_ = c.Read<uint32_t>("version");
  if (version_ != 2 && version_ != 3) Fail(where, "version=" + std::to_string(version_) + " (supported: 2, 3)");
  uint64_t n_tensors = c.Read<uint64_t>("tensor_count"), n_kv = c.Read<uint64_t>("kv_count");
  // Every entry takes at least 8 bytes: larger counts cannot fit the file.
  if (n_tensors > size / 8) Fail(where, "tensor_count=" + std::to_string(n_tensors) + " cannot fit in the file");
  if (n_kv > size / 8) Fail(where, "kv_count=" + std::to_string(n_kv) + " cannot fit in the file");
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = c.String("key #" + std::to_string(i));
    std::string what = "key '" + key + "'";
    if (kv_.count(key)) Fail(where, what + " appears twice");
    uint32_t type = c.Read<uint32_t>(what + " type");
    GgufValue v;
    if (type == kArr) {
      uint32_t et = c.Read<uint32_t>(what + " array type");
      uint64_t n = c.Read<uint64_t>(what + " array length");
      if (et == kArr) Fail(where, what + ": nested arrays are not supported");
      if (n > size - c.pos()) Fail(where, what + ": array length " + std::to_string(n) + " cannot fit in the file");
      v.kind = GgufValue::kArray;
      for (uint64_t j = 0; j < n; ++j) {
        GgufValue e;
        ReadScalar(&c, et, what + "[" + std::to_string(j) + "]", &e, where);
        if (e.kind == GgufValue::kString) v.strings.push_back(std::move(e.s));
        else v.numbers.push_back(e.kind == GgufValue::kFloat ? e.f : static_cast<double>(e.i));
      }
    } else {
      ReadScalar(&c, type, what, &v, where);
    }
    kv_[key] = std::move(v);
  }
  uint64_t alignment = 32;
  if (Has("general.alignment")) {
    int64_t a = Int("general.alignment");
    if (a <= 0 || a > 65536 || (a & (a - 1)) != 0)
      Fail(where, "key 'general.alignment'=" + std::to_string(a) + " is not a power of two <= 65536");
    alignment = static_cast<uint64_t>(a);
  }
  std::vector<uint64_t> offsets;
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensor t;
    t.name = c.String("tensor #" + std::to_string(i) + " name");
    std::string what = "tensor '" + t.name + "'";
    if (index_.count(t.name)) Fail(where, what + " appears twice");
    uint32_t nd = c.Read<uint32_t>(what + " n_dims");
    if (nd < 1 || nd > 4) Fail(where, what + ": n_dims=" + std::to_string(nd) + " (expected 1..4)");
    uint64_t elems = 1;
    for (uint32_t d = 0; d < nd; ++d) {
      uint64_t ne = c.Read<uint64_t>(what + " ne[" + std::to_string(d) + "]");
      if (ne == 0 || ne > (1ULL << 40) || elems > (1ULL << 40) / ne)
        Fail(where, what + ": ne[" + std::to_string(d) + "]=" + std::to_string(ne) + " is out of range");
      elems *= ne;
      t.ne.push_back(ne);
    }
    t.type = c.Read<uint32_t>(what + " type");
    const TypeSize* ts = FindType(t.type);
    if (ts == nullptr) Fail(where, what + ": unknown ggml type " + std::to_string(t.type));
    if (t.ne[0] % ts->block != 0)
      Fail(where, what + ": ne[0]=" + std::to_string(t.ne[0]) + " is not a multiple of the " + ts->name +
                      " block of " + std::to_string(ts->block));
    t.nbytes = elems / ts->block * ts->bytes;
    uint64_t off = c.Read<uint64_t>(what + " offset");
    if (off % alignment != 0)
      Fail(where, what + ": offset " + std::to_string(off) + " is not a multiple of the alignment " + std::to_string(alignment));
    offsets.push_back(off);
    index_[t.name] = tensors_.size();
    tensors_.push_back(std::move(t));
  }
  const uint64_t data_start = (c.pos() + alignment - 1) / alignment * alignment;
  if (data_start > size && n_tensors > 0) Fail(where, "tensor data section starts past the end of the file");
  for (size_t i = 0; i < tensors_.size(); ++i) {
    GgufTensor& t = tensors_[i];
    if (offsets[i] > size - data_start || t.nbytes > size - data_start - offsets[i])
      Fail(where, "tensor '" + t.name + "': data [" + std::to_string(offsets[i]) + ", +" + std::to_string(t.nbytes) +
                      ") runs past the end of the file (data section holds " + std::to_string(size - data_start) + " bytes)");
    t.data = bytes_.data() + data_start + offsets[i];
  }
}

const GgufValue& GgufFile::Get(const std::string& key) const {
  auto it = kv_.find(key);
  if (it == kv_.end()) Fail(Where(), "key '" + key + "' is missing");
  return it->second;
}

int64_t GgufFile::Int(const std::string& key) const {
  const GgufValue& v = Get(key);
  if (v.kind != GgufValue::kInt && v.kind != GgufValue::kBool) Fail(Where(), "key '" + key + "' is not an integer");
  return v.i;
}

int64_t GgufFile::Int(const std::string& key, int64_t fallback) const { return Has(key) ? Int(key) : fallback; }

double GgufFile::Float(const std::string& key, double fallback) const {
  if (!Has(key)) return fallback;
  const GgufValue& v = Get(key);
  if (v.kind == GgufValue::kFloat) return v.f;
  if (v.kind == GgufValue::kInt) return static_cast<double>(v.i);
  Fail(Where(), "key '" + key + "' is not a number");
}

std::string GgufFile::Str(const std::string& key) const {
  const GgufValue& v = Get(key);
  if (v.kind != GgufValue::kString) Fail(Where(), "key '" + key + "' is not a string");
  return v.s;
}

std::string GgufFile::Str(const std::string& key, const std::string& fallback) const {
  return Has(key) ? Str(key) : fallback;
}

const GgufTensor* GgufFile::Find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const GgufTensor& GgufFile::Tensor(const std::string& name) const {
  const GgufTensor* t = Find(name);
  if (t == nullptr) Fail(Where(), "tensor '" + name + "' is missing");
  return *t;
}

}  // namespace gemini::runtime
