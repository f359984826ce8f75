// The .gnb config: JSON -> ModelConfig with every value range-checked (FORMAT.md, Errors).
#include <cmath>
#include <cstdlib>
#include <map>

#include <cerrno>
#include "csrc/runtime/gnb.h"
#include "csrc/runtime/gnb_json.h"

namespace gemini::runtime {
namespace {

[[noreturn]] void Fail(const std::string& where, const std::string& msg) {
  throw FormatError(where + ": config: " + msg);
}

// The integer fields and their ranges: one table for the JSON reader (which quotes the value
// as written) and for ValidateConfig (configs built in code, e.g. from GGUF metadata).
struct IntField {
  const char* key;
  int ModelConfig::*member;
  int64_t lo, hi;
};
constexpr IntField kIntFields[] = {
    {"vocab_size", &ModelConfig::vocab_size, 1, kMaxVocab},
    {"d_model", &ModelConfig::d_model, 1, kMaxWidth},
    {"n_layers", &ModelConfig::n_layers, 1, kMaxLayers},
    {"n_heads", &ModelConfig::n_heads, 1, kMaxHeads},
    {"n_kv_heads", &ModelConfig::n_kv_heads, 1, kMaxHeads},
    {"head_dim", &ModelConfig::head_dim, 2, kMaxHeadDim},
    {"d_ff", &ModelConfig::d_ff, 1, kMaxFf},
    {"max_seq_len", &ModelConfig::max_seq_len, 1, kMaxSeqLen},
    {"group_size", &ModelConfig::group_size, 32, 128},
    {"bos_id", &ModelConfig::bos_id, -1, kMaxVocab - 1},
    {"eos_id", &ModelConfig::eos_id, -1, kMaxVocab - 1},
};

struct FloatField {
  const char* key;
  double ModelConfig::*member;
};
constexpr FloatField kFloatFields[] = {
    {"rope_base", &ModelConfig::rope_base},
    {"norm_eps", &ModelConfig::norm_eps},
    {"logit_softcap", &ModelConfig::logit_softcap},
};

struct BoolField {
  const char* key;
  bool ModelConfig::*member;
  bool required;
};
constexpr BoolField kBoolFields[] = {
    {"tie_embeddings", &ModelConfig::tie_embeddings, true},
    {"add_bos", &ModelConfig::add_bos, true},
    {"qk_norm", &ModelConfig::qk_norm, false},  // absent = false
};

struct StringField {
  const char* key;
  std::string ModelConfig::*member;
  size_t max_bytes;
};
constexpr StringField kStringFields[] = {
    {"name", &ModelConfig::name, 256},
    {"activation", &ModelConfig::activation, 16},
    {"chat_template", &ModelConfig::chat_template, 1 << 16},
};

std::string Range(int64_t lo, int64_t hi) {
  return "[" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
}

std::string Num(double x) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.17g", x);
  return buf;
}

// Range checks of one field's value; `shown` is the value as the message quotes it.
void CheckInt(const IntField& f, int64_t v, const std::string& shown, const std::string& where) {
  if (v < f.lo || v > f.hi)
    Fail(where, std::string("'") + f.key + "' = " + shown + " out of range " + Range(f.lo, f.hi));
}

void CheckFloat(const char* key, double v, const std::string& shown, const std::string& where) {
  const std::string k = key;
  if (!std::isfinite(v)) Fail(where, "'" + k + "' = " + shown + " is not finite");
  if (k == "rope_base" && !(v > 1.0))
    Fail(where, "'rope_base' = " + shown + " must be > 1 (the RoPE wavelength base)");
  if (k == "norm_eps" && !(v > 0.0 && v < 1.0))
    Fail(where, "'norm_eps' = " + shown + " must be in (0, 1) (added to mean(x^2) in RMSNorm)");
  if (k == "logit_softcap" && !(v == 0.0 || v >= 1.0))
    Fail(where, "'logit_softcap' = " + shown + " must be 0 (off) or >= 1");
}

// A JSON integer's text (already in JSON's grammar) as int64; false past 64 bits.
bool ToInt64(const std::string& text, int64_t* out) {
  errno = 0;
  const long long v = std::strtoll(text.c_str(), nullptr, 10);
  if (errno == ERANGE) return false;
  *out = static_cast<int64_t>(v);
  return true;
}

}  // namespace

void ValidateConfig(const ModelConfig& c, const std::string& where) {
  for (const IntField& f : kIntFields) CheckInt(f, c.*(f.member), std::to_string(c.*(f.member)), where);
  for (const FloatField& f : kFloatFields) CheckFloat(f.key, c.*(f.member), Num(c.*(f.member)), where);
  for (const StringField& f : kStringFields)
    if ((c.*(f.member)).size() > f.max_bytes)
      Fail(where, std::string("'") + f.key + "' is " + std::to_string((c.*(f.member)).size()) +
                      " bytes, more than " + std::to_string(f.max_bytes));
  if (c.name.empty()) Fail(where, "'name' is empty");
  if (c.n_kv_heads > c.n_heads || c.n_heads % c.n_kv_heads != 0)
    Fail(where, "n_heads=" + std::to_string(c.n_heads) + " is not a multiple of n_kv_heads=" +
                    std::to_string(c.n_kv_heads));
  if (c.head_dim % 2 != 0)
    Fail(where, "head_dim=" + std::to_string(c.head_dim) + " must be even (RoPE)");
  if (c.activation != "gelu" && c.activation != "silu")
    Fail(where, "activation='" + c.activation + "' not gelu|silu");
  if (c.group_size != 32 && c.group_size != 64 && c.group_size != 128)
    Fail(where, "group_size=" + std::to_string(c.group_size) + " not in {32, 64, 128}");
  if (c.bos_id >= c.vocab_size)
    Fail(where, "bos_id=" + std::to_string(c.bos_id) + " outside the vocabulary [0, " +
                    std::to_string(c.vocab_size) + ") (-1 = none)");
  if (c.eos_id >= c.vocab_size)
    Fail(where, "eos_id=" + std::to_string(c.eos_id) + " outside the vocabulary [0, " +
                    std::to_string(c.vocab_size) + ") (-1 = none)");
  if (c.add_bos && c.bos_id < 0) Fail(where, "add_bos is true but bos_id=-1 (none)");
}

ModelConfig ParseConfigJson(const std::string& json, const std::string& where) {
  if (json.size() > kMaxConfigBytes)
    Fail(where, "config_bytes=" + std::to_string(json.size()) + " exceeds " +
                    std::to_string(kMaxConfigBytes));
  std::map<std::string, JsonValue> kv;
  for (auto& [k, v] : ParseFlatJsonObject(json, where)) kv.emplace(k, std::move(v));
  std::map<std::string, bool> used;
  auto get = [&](const char* key, bool required) -> const JsonValue* {
    auto it = kv.find(key);
    if (it == kv.end()) {
      if (required) Fail(where, std::string("missing key '") + key + "'");
      return nullptr;
    }
    used[key] = true;
    return &it->second;
  };
  ModelConfig c;
  for (const IntField& f : kIntFields) {
    const JsonValue& v = *get(f.key, true);
    int64_t x = 0;
    if (v.kind != JsonValue::kNumber || !v.is_integer)
      Fail(where, std::string("'") + f.key + "' = " + (v.kind == JsonValue::kString ? '"' + v.text + '"' : v.text) +
                      " is not an integer");
    if (!ToInt64(v.text, &x))  // Beyond 64 bits: out of every range.
      Fail(where, std::string("'") + f.key + "' = " + v.text + " out of range " + Range(f.lo, f.hi));
    CheckInt(f, x, v.text, where);  // Before narrowing to int.
    c.*(f.member) = static_cast<int>(x);
  }
  for (const FloatField& f : kFloatFields) {
    const JsonValue& v = *get(f.key, true);
    if (v.kind != JsonValue::kNumber)
      Fail(where, std::string("'") + f.key + "' = " + (v.kind == JsonValue::kString ? '"' + v.text + '"' : v.text) +
                      " is not a number");
    const double x = std::strtod(v.text.c_str(), nullptr);
    CheckFloat(f.key, x, v.text, where);
    c.*(f.member) = x;
  }
  for (const BoolField& f : kBoolFields) {
    const JsonValue* v = get(f.key, f.required);
    if (v == nullptr) continue;
    if (v->kind != JsonValue::kBool)
      Fail(where, std::string("'") + f.key + "' = " + (v->kind == JsonValue::kString ? '"' + v->text + '"' : v->text) +
                      " is not true/false");
    c.*(f.member) = v->text == "true";
  }
  for (const StringField& f : kStringFields) {
    const JsonValue& v = *get(f.key, true);
    if (v.kind != JsonValue::kString) Fail(where, std::string("'") + f.key + "' = " + v.text + " is not a string");
    c.*(f.member) = v.text;
  }
  for (const auto& [k, v] : kv)
    if (!used.count(k)) Fail(where, "unknown key '" + k + "' (FORMAT.md lists the config keys)");
  ValidateConfig(c, where);
  return c;
}

}  // namespace gemini::runtime
