#include "csrc/runtime/gnb.h"

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

// ---- A flat JSON object parser: {"key": "str" | number | true | false | null, ...}. ----
class Json {
 public:
  Json(const std::string& s, const std::string& where) : s_(s), where_(where) {}
  std::map<std::string, std::string> ParseObject(std::map<std::string, char>* kinds) {
    std::map<std::string, std::string> out;
    Ws();
    Expect('{');
    Ws();
    if (Peek() == '}') { ++i_; return out; }
    while (true) {
      Ws();
      std::string key = String();
      Ws();
      Expect(':');
      Ws();
      char c = Peek();
      if (c == '"') {
        out[key] = String();
        (*kinds)[key] = 's';
      } else {
        size_t start = i_;
        while (i_ < s_.size() && std::strchr(",} \n\r\t", s_[i_]) == nullptr) ++i_;
        out[key] = s_.substr(start, i_ - start);
        (*kinds)[key] = 'v';
        if (out[key].empty()) Err("empty value for key '" + key + "'");
      }
      Ws();
      if (Peek() == ',') { ++i_; continue; }
      Expect('}');
      return out;
    }
  }

 private:
  char Peek() {
    if (i_ >= s_.size()) Err("unexpected end of the config JSON");
    return s_[i_];
  }
  void Ws() { while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_; }
  void Expect(char c) {
    if (Peek() != c) Err(std::string("expected '") + c + "' at byte " + std::to_string(i_));
    ++i_;
  }
  [[noreturn]] void Err(const std::string& m) { Fail(where_, "config: " + m); }
  static void Utf8(uint32_t cp, std::string* out) {
    if (cp < 0x80) { out->push_back(static_cast<char>(cp)); }
    else if (cp < 0x800) { out->push_back(static_cast<char>(0xC0 | (cp >> 6))); out->push_back(static_cast<char>(0x80 | (cp & 0x3F))); }
    else if (cp < 0x10000) { out->push_back(static_cast<char>(0xE0 | (cp >> 12))); out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F))); out->push_back(static_cast<char>(0x80 | (cp & 0x3F))); }
    else { out->push_back(static_cast<char>(0xF0 | (cp >> 18))); out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F))); out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F))); out->push_back(static_cast<char>(0x80 | (cp & 0x3F))); }
  }
  uint32_t Hex4() {
    if (i_ + 4 > s_.size()) Err("truncated \\u escape");
    uint32_t v = 0;
    for (int k = 0; k < 4; ++k) {
      char c = s_[i_++];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= c - '0';
      else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
      else Err("bad \\u escape");
    }
    return v;
  }
  std::string String() {
    Expect('"');
    std::string out;
    while (true) {
      char c = Peek();
      ++i_;
      if (c == '"') return out;
      if (c != '\\') { out.push_back(c); continue; }
      char e = Peek();
      ++i_;
      switch (e) {
        case 'n': out.push_back('\n'); break;
        case 't': out.push_back('\t'); break;
        case 'r': out.push_back('\r'); break;
        case 'b': out.push_back('\b'); break;
        case 'f': out.push_back('\f'); break;
        case 'u': {
          uint32_t cp = Hex4();
          if (cp >= 0xD800 && cp < 0xDC00 && i_ + 6 <= s_.size() && s_[i_] == '\\' && s_[i_ + 1] == 'u') {
            i_ += 2;
            uint32_t lo = Hex4();
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          Utf8(cp, &out);
          break;
        }
        default: out.push_back(e);
      }
    }
  }
  const std::string& s_;
  const std::string& where_;
  size_t i_ = 0;
};

uint64_t ShapeProduct(const TensorView& t) {
  uint64_t n = 1;
  for (uint64_t d : t.shape) n *= d;
  return n;
}

uint64_t ExpectedBytes(const TensorView& t, const std::string& where) {
  switch (t.dtype) {
    case kF32: return ShapeProduct(t) * 4;
    case kF16:
    case kBF16: return ShapeProduct(t) * 2;
    case kInt4F16:
    case kInt4BF16: {
      if (t.shape.size() != 2) Fail(where, "tensor '" + t.name + "': int4 tensors are 2-D [N, K], ndim=" + std::to_string(t.shape.size()));
      uint32_t g = t.group_size;
      if (g != 32 && g != 64 && g != 128)
        Fail(where, "tensor '" + t.name + "': group_size=" + std::to_string(g) + " not in {32, 64, 128}");
      uint64_t n = t.shape[0], k = t.shape[1];
      uint64_t kp = (k + g - 1) / g * g;
      return n * kp / 2 + 2 * n * (kp / g);
    }
  }
  Fail(where, "tensor '" + t.name + "': dtype=" + std::to_string(t.dtype) + " unknown (0..4)");
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

ModelConfig ParseConfigJson(const std::string& json, const std::string& where) {
  std::map<std::string, char> kinds;
  auto kv = Json(json, where).ParseObject(&kinds);
  auto get = [&](const char* key) -> const std::string& {
    auto it = kv.find(key);
    if (it == kv.end()) Fail(where, std::string("config: missing key '") + key + "'");
    return it->second;
  };
  auto integer = [&](const char* key) {
    const std::string& v = get(key);
    char* end = nullptr;
    long long x = std::strtoll(v.c_str(), &end, 10);
    if (kinds[key] != 'v' || *end != '\0' || x < -1 || x > (1LL << 31))
      Fail(where, std::string("config: '") + key + "' = " + v + " is not a valid integer");
    return static_cast<int>(x);
  };
  auto number = [&](const char* key) {
    const std::string& v = get(key);
    char* end = nullptr;
    double x = std::strtod(v.c_str(), &end);
    if (kinds[key] != 'v' || *end != '\0' || !std::isfinite(x))
      Fail(where, std::string("config: '") + key + "' = " + v + " is not a number");
    return x;
  };
  auto boolean = [&](const char* key) {
    const std::string& v = get(key);
    if (kinds[key] != 'v' || (v != "true" && v != "false"))
      Fail(where, std::string("config: '") + key + "' = " + v + " is not true/false");
    return v == "true";
  };
  auto str = [&](const char* key) {
    const std::string& v = get(key);
    if (kinds[key] != 's') Fail(where, std::string("config: '") + key + "' is not a string");
    return v;
  };
  ModelConfig c;
  c.name = str("name");
  c.vocab_size = integer("vocab_size");
  c.d_model = integer("d_model");
  c.n_layers = integer("n_layers");
  c.n_heads = integer("n_heads");
  c.n_kv_heads = integer("n_kv_heads");
  c.head_dim = integer("head_dim");
  c.d_ff = integer("d_ff");
  c.max_seq_len = integer("max_seq_len");
  c.group_size = integer("group_size");
  c.bos_id = integer("bos_id");
  c.eos_id = integer("eos_id");
  c.rope_base = number("rope_base");
  c.norm_eps = number("norm_eps");
  c.logit_softcap = number("logit_softcap");
  c.tie_embeddings = boolean("tie_embeddings");
  c.add_bos = boolean("add_bos");
  c.activation = str("activation");
  c.chat_template = str("chat_template");
  auto positive = [&](const char* key, int v) {
    if (v <= 0) Fail(where, std::string("config: '") + key + "' = " + std::to_string(v) + " must be > 0");
  };
  positive("vocab_size", c.vocab_size);
  positive("d_model", c.d_model);
  positive("n_layers", c.n_layers);
  positive("n_heads", c.n_heads);
  positive("n_kv_heads", c.n_kv_heads);
  positive("head_dim", c.head_dim);
  positive("d_ff", c.d_ff);
  positive("max_seq_len", c.max_seq_len);
  if (c.n_heads % c.n_kv_heads != 0)
    Fail(where, "config: n_heads=" + std::to_string(c.n_heads) + " is not a multiple of n_kv_heads=" + std::to_string(c.n_kv_heads));
  if (c.head_dim % 2 != 0) Fail(where, "config: head_dim=" + std::to_string(c.head_dim) + " must be even (RoPE)");
  if (c.activation != "gelu" && c.activation != "silu")
    Fail(where, "config: activation='" + c.activation + "' not gelu|silu");
  if (c.group_size != 32 && c.group_size != 64 && c.group_size != 128)
    Fail(where, "config: group_size=" + std::to_string(c.group_size) + " not in {32, 64, 128}");
  if (c.bos_id >= c.vocab_size || c.eos_id >= c.vocab_size)
    Fail(where, "config: bos_id/eos_id out of the vocabulary");
  return c;
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
  if (n_tensors > 1000000) Fail(w, "n_tensors=" + std::to_string(n_tensors) + " implausible");
  uint64_t data_start = (header_bytes + kAlign - 1) / kAlign * kAlign;
  for (uint32_t i = 0; i < n_tensors; ++i) {
    TensorView t;
    uint16_t nlen = cur.Read<uint16_t>("tensor name_len");
    t.name = cur.Bytes(nlen, "tensor name");
    uint8_t dtype = cur.Read<uint8_t>("tensor dtype");
    uint8_t ndim = cur.Read<uint8_t>("tensor ndim");
    t.group_size = cur.Read<uint32_t>("tensor group_size");
    if (dtype > kInt4BF16)
      Fail(w, "tensor '" + t.name + "': dtype=" + std::to_string(dtype) + " unknown (0..4)");
    if (ndim < 1 || ndim > 4)
      Fail(w, "tensor '" + t.name + "': ndim=" + std::to_string(ndim) + " not in 1..4");
    t.dtype = static_cast<DType>(dtype);
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
    }
    if (index_.count(t.name)) Fail(w, "tensor '" + t.name + "' appears twice in the table");
    index_[t.name] = tensors_.size();
    tensors_.push_back(std::move(t));
  }
  if (cur.pos() != header_bytes - 4 - kPrefixBytes)
    Fail(w, "tensor table ends at byte " + std::to_string(cur.pos() + kPrefixBytes) + " but header_bytes says " + std::to_string(header_bytes - 4));
  CheckModelShapes();
}

void GnbFile::CheckModelShapes() const {
  const ModelConfig& c = config_;
  auto expect = [&](const std::string& name, std::vector<uint64_t> shape, bool int4) {
    const TensorView& t = Get(name);
    bool is_int4 = t.dtype == kInt4F16 || t.dtype == kInt4BF16;
    if (int4 != is_int4 || (!int4 && t.dtype != kF32))
      Fail(path_, "tensor '" + name + "': dtype=" + std::to_string(t.dtype) + ", expected " + (int4 ? "int4 (3|4)" : "f32 (0)"));
    if (t.shape != shape) {
      std::ostringstream s;
      s << "tensor '" << name << "': shape [";
      for (size_t i = 0; i < t.shape.size(); ++i) s << (i ? ", " : "") << t.shape[i];
      s << "] but the config needs [";
      for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
      s << "]";
      Fail(path_, s.str());
    }
    if (int4 && static_cast<int>(t.group_size) != c.group_size)
      Fail(path_, "tensor '" + name + "': group_size=" + std::to_string(t.group_size) + " but config group_size=" + std::to_string(c.group_size));
  };
  uint64_t D = c.d_model, H = c.n_heads, K = c.n_kv_heads, Dh = c.head_dim, F = c.d_ff, V = c.vocab_size;
  expect("embed", {V, D}, true);
  for (int i = 0; i < c.n_layers; ++i) {
    std::string p = "layers." + std::to_string(i) + ".";
    expect(p + "attn_norm", {D}, false);
    expect(p + "wq", {H * Dh, D}, true);
    expect(p + "wk", {K * Dh, D}, true);
    expect(p + "wv", {K * Dh, D}, true);
    expect(p + "wo", {D, H * Dh}, true);
    expect(p + "mlp_norm", {D}, false);
    expect(p + "w_gate", {F, D}, true);
    expect(p + "w_up", {F, D}, true);
    expect(p + "w_down", {D, F}, true);
  }
  expect("final_norm", {D}, false);
  if (!c.tie_embeddings) expect("unembed", {V, D}, true);
}

}  // namespace gemini::runtime
