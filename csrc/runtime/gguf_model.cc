#include "csrc/runtime/gguf_model.h"
#include "csrc/runtime/gnb.h"

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>

namespace gemini::runtime {
namespace {

#include "csrc/runtime/unicode_tables.inc"

[[noreturn]] void Fail(const GgufFile& f, const std::string& msg) { throw FormatError(f.Where() + msg); }

int PositiveInt(const GgufFile& f, const std::string& key) {
  int64_t v = f.Int(key);
  if (v <= 0 || v > (1 << 24)) Fail(f, "key '" + key + "'=" + std::to_string(v) + " is out of range");
  return static_cast<int>(v);
}

// A special-token id: -1 (none) or in [0, vocab), checked as 64 bits before narrowing.
int TokenId(const GgufFile& f, const std::string& key, int vocab) {
  int64_t v = f.Int(key, -1);
  if (v < -1 || v >= vocab)
    Fail(f, "key '" + key + "'=" + std::to_string(v) + " is not -1 or an id below the vocabulary (" +
                std::to_string(vocab) + ")");
  return static_cast<int>(v);
}

// The ChatML template rendered for one user turn ({prompt} marks the text), with the default
// system turn the template carries; empty for other template families.
std::string ChatTemplate(const GgufFile& f) {
  std::string t = f.Str("tokenizer.chat_template", "");
  if (t.find("<|im_start|>") == std::string::npos || t.find("message['content']") == std::string::npos) return "";
  std::string out;
  size_t at = t.find("<|im_start|>system");
  if (at != std::string::npos) {
    size_t p = at + std::strlen("<|im_start|>system");
    if (p < t.size() && t[p] == '\\') ++p;
    size_t end = t.find("<|im_end|>", p);
    if (p < t.size() && t[p] == '\n' && end != std::string::npos) {
      std::string sys = t.substr(p + 1, end - p - 1);
      for (size_t q; (q = sys.find("\\n")) != std::string::npos;) sys.replace(q, 2, "\n");
      out = "<|im_start|>system\n" + sys + "<|im_end|>\n";
    }
  }
  return out + "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n";
}

// Collects matrices and norms into one arena, then points the QMatrix views into it.
class Packer {
 public:
  explicit Packer(const GgufFile& f) : f_(f) {}

  // Plans a [n, k] matrix from `name` (checked against the expected shape).
  int Matrix(const std::string& name, int n, int k, int permute_heads = 0) {
    const GgufTensor& t = f_.Tensor(name);
    if (t.ne.size() != 2 || t.ne[0] != static_cast<uint64_t>(k) || t.ne[1] != static_cast<uint64_t>(n))
      Fail(f_, "tensor '" + name + "' has shape " + Shape(t) + ", expected [" + std::to_string(k) + ", " + std::to_string(n) + "]");
    if (k % 32 != 0) Fail(f_, "tensor '" + name + "': ne[0]=" + std::to_string(k) + " is not a multiple of 32");
    QMatrix m;
    m.n = n; m.k = k; m.kp = k; m.group = 32;
    switch (t.type) {
      case kGgmlQ4_0: m.format = WFormat::kQ4; break;
      case kGgmlQ4_1: m.format = WFormat::kQ4Min; break;
      case kGgmlQ8_0: case kGgmlF32: case kGgmlF16: case kGgmlBF16: m.format = WFormat::kQ8; break;
      default:
        Fail(f_, "tensor '" + name + "' has type " + GgmlTypeName(t.type) + " (" + std::to_string(t.type) +
                     "); supported: F32, F16, BF16, Q4_0, Q4_1, Q8_0");
    }
    plans_.push_back({&t, m, Reserve(m.Bytes()), permute_heads});
    return static_cast<int>(plans_.size()) - 1;
  }

  // Plans a vector [d] (f32 norm scale).
  int Vector(const std::string& name, int d) {
    const GgufTensor& t = f_.Tensor(name);
    if (t.ne.size() != 1 || t.ne[0] != static_cast<uint64_t>(d))
      Fail(f_, "tensor '" + name + "' has shape " + Shape(t) + ", expected [" + std::to_string(d) + "]");
    if (t.type != kGgmlF32 && t.type != kGgmlF16 && t.type != kGgmlBF16)
      Fail(f_, "tensor '" + name + "' has type " + GgmlTypeName(t.type) + "; norm scales must be F32, F16 or BF16");
    vecs_.push_back({&t, norms_});
    norms_ += d;
    return static_cast<int>(vecs_.size()) - 1;
  }

  void Fill() {
    arena_.assign(bytes_, 0);
    norm_data_.assign(norms_, 0.f);
    for (Plan& p : plans_) Convert(&p);
    for (const VecPlan& v : vecs_) {
      float* out = norm_data_.data() + v.at;
      for (uint64_t i = 0; i < v.t->ne[0]; ++i) out[i] = Element(*v.t, i);
    }
  }
  QMatrix Mat(int id) const { return plans_[id].m; }
  const float* Vec(int id) const { return norm_data_.data() + vecs_[id].at; }
  std::vector<uint8_t> TakeArena() { return std::move(arena_); }
  std::vector<float> TakeNorms() { return std::move(norm_data_); }

 private:
  struct Plan { const GgufTensor* t; QMatrix m; uint64_t at; int permute_heads; };
  struct VecPlan { const GgufTensor* t; size_t at; };

  static std::string Shape(const GgufTensor& t) {
    std::string s = "[";
    for (size_t i = 0; i < t.ne.size(); ++i) s += (i ? ", " : "") + std::to_string(t.ne[i]);
    return s + "]";
  }
  uint64_t Reserve(uint64_t n) {
    uint64_t at = bytes_;
    bytes_ += (n + 63) / 64 * 64;
    return at;
  }
  static float Element(const GgufTensor& t, uint64_t i) {
    uint16_t h;
    switch (t.type) {
      case kGgmlF32: { float v; std::memcpy(&v, t.data + 4 * i, 4); return v; }
      case kGgmlF16: std::memcpy(&h, t.data + 2 * i, 2); return F16ToF32(h);
      default: std::memcpy(&h, t.data + 2 * i, 2); return BF16ToF32(h);
    }
  }
  // Source row of destination row r: llama.cpp stores Q/K rows of each head interleaved
  // (pairs for its RoPE); rotate-half wants the two halves apart.
  static int SourceRow(int r, int heads, int n) {
    if (heads == 0) return r;
    int dh = n / heads, h = r / dh, j = r % dh, half = dh / 2;
    int a = j / half, i = j % half;  // destination (half a, index i) <- source pair i, member a
    return h * dh + 2 * i + a;
  }
  void Convert(Plan* p) {
    QMatrix& m = p->m;
    uint8_t* base = arena_.data() + p->at;
    const int nb = m.kp / 32;
    uint8_t* packed = base;
    uint16_t* scales = reinterpret_cast<uint16_t*>(base + static_cast<size_t>(m.n) * m.RowBytes());
    uint16_t* mins = m.format == WFormat::kQ4Min ? scales + static_cast<size_t>(m.n) * nb : nullptr;
    const GgufTensor& t = *p->t;
    std::vector<float> row;
    for (int r = 0; r < m.n; ++r) {
      const int src = SourceRow(r, p->permute_heads, m.n);
      uint8_t* out = packed + static_cast<size_t>(r) * m.RowBytes();
      for (int b = 0; b < nb; ++b) {
        size_t o = static_cast<size_t>(r) * nb + b;
        if (t.type == kGgmlQ4_0 || t.type == kGgmlQ4_1) {
          const int bs = t.type == kGgmlQ4_0 ? 18 : 20;
          const uint8_t* blk = t.data + (static_cast<size_t>(src) * nb + b) * bs;
          std::memcpy(&scales[o], blk, 2);
          if (mins != nullptr) std::memcpy(&mins[o], blk + 2, 2);
          std::memcpy(out + b * 16, blk + bs - 16, 16);  // same nibble order as ours
        } else if (t.type == kGgmlQ8_0) {
          const uint8_t* blk = t.data + (static_cast<size_t>(src) * nb + b) * 34;
          std::memcpy(&scales[o], blk, 2);
          for (int j = 0; j < 32; ++j) out[b * 32 + j] = static_cast<uint8_t>(blk[2 + j] ^ 0x80);
        } else {  // float matrix -> int8 per 32-block (absmax / 127, f16 scale)
          float v[32], amax = 0.f;
          for (int j = 0; j < 32; ++j) {
            v[j] = Element(t, static_cast<uint64_t>(src) * m.k + b * 32 + j);
            amax = std::max(amax, std::fabs(v[j]));
          }
          uint16_t d16 = F32ToF16(amax / 127.f);
          float d = F16ToF32(d16);
          scales[o] = d16;
          for (int j = 0; j < 32; ++j) {
            int q = d > 0 ? static_cast<int>(std::nearbyint(v[j] / d)) : 0;
            q = std::min(127, std::max(-127, q));
            out[b * 32 + j] = static_cast<uint8_t>(q + 128);
          }
        }
      }
    }
    m.packed = packed;
    m.scales = scales;
    m.mins = mins;
  }

  const GgufFile& f_;
  std::vector<Plan> plans_;
  std::vector<VecPlan> vecs_;
  uint64_t bytes_ = 0;
  size_t norms_ = 0;
  std::vector<uint8_t> arena_;
  std::vector<float> norm_data_;
};

}  // namespace

ModelConfig GgufConfig(const GgufFile& f) {
  std::string arch = f.Str("general.architecture");
  if (arch != "llama")
    Fail(f, "key 'general.architecture'='" + arch + "': only 'llama' models are supported");
  ModelConfig c;
  c.name = f.Str("general.name", f.Str("general.basename", "gguf"));
  c.n_layers = PositiveInt(f, "llama.block_count");
  c.d_model = PositiveInt(f, "llama.embedding_length");
  c.d_ff = PositiveInt(f, "llama.feed_forward_length");
  c.n_heads = PositiveInt(f, "llama.attention.head_count");
  c.n_kv_heads = f.Has("llama.attention.head_count_kv") ? PositiveInt(f, "llama.attention.head_count_kv") : c.n_heads;
  if (c.d_model % c.n_heads != 0)
    Fail(f, "key 'llama.embedding_length'=" + std::to_string(c.d_model) + " is not a multiple of head_count=" + std::to_string(c.n_heads));
  c.head_dim = f.Has("llama.attention.key_length") ? PositiveInt(f, "llama.attention.key_length") : c.d_model / c.n_heads;
  if (c.n_heads % c.n_kv_heads != 0)
    Fail(f, "key 'llama.attention.head_count_kv'=" + std::to_string(c.n_kv_heads) + " does not divide head_count=" + std::to_string(c.n_heads));
  if (f.Has("llama.rope.dimension_count") && f.Int("llama.rope.dimension_count") != c.head_dim)
    Fail(f, "key 'llama.rope.dimension_count'=" + std::to_string(f.Int("llama.rope.dimension_count")) +
                ": partial rotary embeddings are not supported (head_dim=" + std::to_string(c.head_dim) + ")");
  if (c.head_dim % 2 != 0) Fail(f, "head_dim=" + std::to_string(c.head_dim) + " is odd");
  c.max_seq_len = f.Has("llama.context_length") ? PositiveInt(f, "llama.context_length") : 2048;
  const GgufTensor& emb = f.Tensor("token_embd.weight");
  if (emb.ne.size() != 2) Fail(f, "tensor 'token_embd.weight' is not a matrix");
  if (emb.ne[1] == 0 || emb.ne[1] > (1u << 24))
    Fail(f, "tensor 'token_embd.weight' has " + std::to_string(emb.ne[1]) + " rows: out of range");
  c.vocab_size = static_cast<int>(emb.ne[1]);
  if (f.Has("llama.vocab_size") && f.Int("llama.vocab_size") != c.vocab_size)
    Fail(f, "key 'llama.vocab_size'=" + std::to_string(f.Int("llama.vocab_size")) + " disagrees with tensor 'token_embd.weight' rows " + std::to_string(c.vocab_size));
  c.rope_base = f.Float("llama.rope.freq_base", 10000.0);
  c.norm_eps = f.Float("llama.attention.layer_norm_rms_epsilon", 1e-5);
  c.activation = "silu";
  c.group_size = 32;
  c.tie_embeddings = f.Find("output.weight") == nullptr;
  c.qk_norm = f.Find("blk.0.attn_q_norm.weight") != nullptr;
  c.bos_id = TokenId(f, "tokenizer.ggml.bos_token_id", c.vocab_size);
  c.eos_id = TokenId(f, "tokenizer.ggml.eos_token_id", c.vocab_size);
  c.add_bos = f.Int("tokenizer.ggml.add_bos_token", 0) != 0;
  c.chat_template = ChatTemplate(f);
  // The same value checks a .gnb config gets (finite positive eps, rope base, ids, sizes).
  ValidateConfig(c, f.path());
  return c;
}

std::unique_ptr<Model> ModelFromGguf(const GgufFile& f, const Kernels& kernels) {
  ModelConfig c = GgufConfig(f);
  const int D = c.d_model, H = c.n_heads, K = c.n_kv_heads, Dh = c.head_dim, F = c.d_ff, V = c.vocab_size;
  Packer p(f);
  int embed = p.Matrix("token_embd.weight", V, D);
  int unembed = c.tie_embeddings ? -1 : p.Matrix("output.weight", V, D);
  int final_norm = p.Vector("output_norm.weight", D);
  struct Ids { int an, mn, qn, kn, q, k, v, o, g, u, d; };
  std::vector<Ids> ids;
  for (int i = 0; i < c.n_layers; ++i) {
    std::string b = "blk." + std::to_string(i) + ".";
    Ids l;
    l.an = p.Vector(b + "attn_norm.weight", D);
    l.mn = p.Vector(b + "ffn_norm.weight", D);
    const bool qk = c.qk_norm;
    l.qn = qk ? p.Vector(b + "attn_q_norm.weight", Dh) : -1;
    l.kn = qk ? p.Vector(b + "attn_k_norm.weight", Dh) : -1;
    l.q = p.Matrix(b + "attn_q.weight", H * Dh, D, H);
    l.k = p.Matrix(b + "attn_k.weight", K * Dh, D, K);
    l.v = p.Matrix(b + "attn_v.weight", K * Dh, D);
    l.o = p.Matrix(b + "attn_output.weight", D, H * Dh);
    l.g = p.Matrix(b + "ffn_gate.weight", F, D);
    l.u = p.Matrix(b + "ffn_up.weight", F, D);
    l.d = p.Matrix(b + "ffn_down.weight", D, F);
    ids.push_back(l);
  }
  p.Fill();
  std::vector<LayerWeights> layers;
  for (const Ids& l : ids) {
    LayerWeights w;
    w.attn_norm = p.Vec(l.an);
    w.mlp_norm = p.Vec(l.mn);
    if (l.qn >= 0) { w.q_norm = p.Vec(l.qn); w.k_norm = p.Vec(l.kn); }
    w.wq = p.Mat(l.q); w.wk = p.Mat(l.k); w.wv = p.Mat(l.v); w.wo = p.Mat(l.o);
    w.w_gate = p.Mat(l.g); w.w_up = p.Mat(l.u); w.w_down = p.Mat(l.d);
    layers.push_back(w);
  }
  QMatrix e = p.Mat(embed), u = unembed >= 0 ? p.Mat(unembed) : QMatrix();
  const float* fn = p.Vec(final_norm);
  return Model::FromParts(c, kernels, p.TakeArena(), p.TakeNorms(), std::move(layers), e, u, fn);
}

std::string GgufBpeBlob(const GgufFile& f) {
  std::string model = f.Str("tokenizer.ggml.model");
  if (model != "gpt2")
    Fail(f, "key 'tokenizer.ggml.model'='" + model + "': only byte-level BPE ('gpt2') tokenizers are supported");
  std::string pre = f.Str("tokenizer.ggml.pre", "default");
  if (pre != "default" && pre != "gpt2" && pre != "smollm")
    Fail(f, "key 'tokenizer.ggml.pre'='" + pre + "': supported pre-tokenizers are default, gpt2, smollm");
  const GgufValue& tokens = f.Get("tokenizer.ggml.tokens");
  const GgufValue& merges = f.Get("tokenizer.ggml.merges");
  if (tokens.kind != GgufValue::kArray || tokens.strings.empty())
    Fail(f, "key 'tokenizer.ggml.tokens' is not an array of strings");
  if (merges.kind != GgufValue::kArray || (merges.strings.empty() && !merges.numbers.empty()))
    Fail(f, "key 'tokenizer.ggml.merges' is not an array of strings");
  std::string out;
  auto u32 = [&](uint32_t v) { out.append(reinterpret_cast<const char*>(&v), 4); };
  u32(static_cast<uint32_t>(tokens.strings.size()));
  std::map<std::string, uint32_t> id;
  for (size_t i = 0; i < tokens.strings.size(); ++i) {
    const std::string& t = tokens.strings[i];
    if (t.size() > 65535) Fail(f, "key 'tokenizer.ggml.tokens'[" + std::to_string(i) + "] is longer than 65535 bytes");
    uint16_t len = static_cast<uint16_t>(t.size());
    out.append(reinterpret_cast<const char*>(&len), 2);
    out += t;
    id.emplace(t, static_cast<uint32_t>(i));
  }
  u32(static_cast<uint32_t>(merges.strings.size()));
  for (size_t i = 0; i < merges.strings.size(); ++i) {
    const std::string& m = merges.strings[i];
    size_t sp = m.find(' ');
    auto l = sp == std::string::npos ? id.end() : id.find(m.substr(0, sp));
    auto r = sp == std::string::npos ? id.end() : id.find(m.substr(sp + 1));
    if (l == id.end() || r == id.end())
      Fail(f, "key 'tokenizer.ggml.merges'[" + std::to_string(i) + "]='" + m + "' does not name two tokens");
    u32(l->second);
    u32(r->second);
  }
  std::vector<uint32_t> specials;
  if (f.Has("tokenizer.ggml.token_type")) {
    const GgufValue& types = f.Get("tokenizer.ggml.token_type");
    for (size_t i = 0; i < types.numbers.size() && i < tokens.strings.size(); ++i)
      if (types.numbers[i] == 3) specials.push_back(static_cast<uint32_t>(i));  // control tokens
  }
  u32(static_cast<uint32_t>(specials.size()));
  for (uint32_t s : specials) u32(s);
  u32(pre == "smollm" ? 1 : 0);  // llama.cpp's smollm pre-tokenizer splits digits one by one
  auto table = [&](const uint32_t (*ranges)[2], size_t n) {
    u32(static_cast<uint32_t>(n));
    for (size_t i = 0; i < n; ++i) { u32(ranges[i][0]); u32(ranges[i][1]); }
  };
  table(kLetterRanges, sizeof(kLetterRanges) / sizeof(kLetterRanges[0]));
  table(kNumberRanges, sizeof(kNumberRanges) / sizeof(kNumberRanges[0]));
  return out;
}

std::unique_ptr<Tokenizer> TokenizerFromGguf(const GgufFile& f) {
  return Tokenizer::Create(kTokBpe, GgufBpeBlob(f), f.path());
}

bool IsGgufFile(const std::string& path) {
  // Only a regular file is opened here: a FIFO would block, and the .gnb reader refuses
  // non-regular paths with its own message.
  struct stat st;
  if (stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return false;
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {0, 0, 0, 0};
  in.read(magic, 4);
  return in.gcount() == 4 && std::memcmp(magic, "GGUF", 4) == 0;
}

LoadedModel OpenModelFile(const std::string& path, const Kernels& kernels) {
  LoadedModel m;
  m.path = path;
  if (IsGgufFile(path)) {
    std::unique_ptr<GgufFile> f = GgufFile::Open(path);
    m.model = ModelFromGguf(*f, kernels);
    try {
      m.tokenizer = TokenizerFromGguf(*f);
    } catch (const FormatError& e) {  // the weights still run from token ids
      m.no_tokenizer = e.what();
    }
    return m;
  }
  m.gnb = GnbFile::Open(path);
  m.model = Model::FromFile(m.gnb, kernels);
  if (m.gnb->tokenizer_kind() != kTokNone)
    m.tokenizer = Tokenizer::Create(m.gnb->tokenizer_kind(), m.gnb->tokenizer_bytes(), path);
  else
    m.no_tokenizer = path + " has no tokenizer";
  return m;
}

}  // namespace gemini::runtime
