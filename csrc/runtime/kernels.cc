// The portable scalar kernels (the reference every ISA path is tested against), activation
// quantisation (one implementation for every ISA, so their inputs are bit-identical), f16
// conversion and the run-time choice of kernels.
#include "csrc/runtime/kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <vector>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

#if defined(__aarch64__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#endif

namespace gemini::runtime {

float F16ToF32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1F, mant = h & 0x3FF, bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // Subnormal: renormalise.
      int e = -1;
      do { ++e; mant <<= 1; } while ((mant & 0x400) == 0);
      bits = sign | ((127 - 15 - e) << 23) | ((mant & 0x3FF) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7F800000 | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

float BF16ToF32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t F32ToF16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000;
  uint32_t abs = x & 0x7FFFFFFF;
  if (abs >= 0x7F800000) return static_cast<uint16_t>(sign | 0x7C00 | (abs > 0x7F800000 ? 0x200 : 0));
  if (abs >= 0x477FF000) return static_cast<uint16_t>(sign | 0x7C00);  // rounds to >= 65520: inf
  if (abs < 0x38800000) {  // f16 subnormal or zero: scale into the 10-bit mantissa, round to even
    float a;
    std::memcpy(&a, &abs, 4);
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(std::nearbyint(a * 16777216.0f)));
  }
  uint32_t mant = abs & 0x7FFFFF, e = (abs >> 23) - 127 + 15;
  uint32_t h = (e << 10) | (mant >> 13);
  uint32_t rest = mant & 0x1FFF;
  if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) ++h;  // may carry into the exponent: correct
  return static_cast<uint16_t>(sign | h);
}

uint64_t QMatrix::Bytes() const {
  uint64_t b = static_cast<uint64_t>(n) * RowBytes() + 2ULL * n * (kp / group);
  if (format == WFormat::kQ4Min) b += 2ULL * n * (kp / 32);
  return b;
}

void QuantizeRowScalar(const float* x, int nb, int8_t* q, float* d, int32_t* sumq) {
  for (int b = 0; b < nb; ++b) {
    const float* xb = x + b * 32;
    float amax = 0.f;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(xb[j]));
    float id = amax > 0.f ? 127.f / amax : 0.f;
    int sum = 0;
    for (int j = 0; j < 32; ++j) {
      int v = static_cast<int>(std::nearbyint(xb[j] * id));
      v = std::min(127, std::max(-127, v));
      q[b * 32 + j] = static_cast<int8_t>(v);
      sum += v;
    }
    d[b] = amax / 127.f;
    sumq[b] = sum;
  }
}

void QuantizeActs(const float* x, int t, int ldx, int kp, QActs* out, QuantizeRowFn row) {
  const int nb = kp / 32;
  out->t = t;
  out->kp = kp;
  auto grow = [](auto& v, size_t n) { if (v.size() < n) v.resize(n); };
  grow(out->q, static_cast<size_t>(t) * kp);
  grow(out->d, static_cast<size_t>(t) * nb);
  grow(out->s, static_cast<size_t>(t) * nb);
  grow(out->sumq, static_cast<size_t>(t) * nb);
  grow(out->dexp, static_cast<size_t>(t) * nb * 8);
  grow(out->bexp, static_cast<size_t>(t) * nb * 8);
  const int nb4 = (nb + 3) / 4 * 4;
  out->nb4 = nb4;
  grow(out->q4, static_cast<size_t>(t) * nb4 * 32);
  grow(out->d4, static_cast<size_t>(t) * nb4 * 4);
  grow(out->b4, static_cast<size_t>(t) * nb4 * 4);
  grow(out->s4, static_cast<size_t>(t) * nb4 * 4);
  grow(out->qb, static_cast<size_t>(t) * kp);
  grow(out->db, static_cast<size_t>(t) * nb);
  grow(out->sb, static_cast<size_t>(t) * nb);
  grow(out->ob, static_cast<size_t>(t) * nb);
  for (int i = 0; i < t; ++i) {
    int8_t* qi = out->q.data() + static_cast<size_t>(i) * kp;
    const size_t o0 = static_cast<size_t>(i) * nb;
    row(x + static_cast<size_t>(i) * ldx, nb, qi, out->d.data() + o0, out->sumq.data() + o0);
    for (int b = 0; b < nb; ++b) {
      const size_t o = o0 + b;
      const float d = out->d[o];
      const int sum = out->sumq[o];
      out->s[o] = d * static_cast<float>(sum);
      for (int j = 0; j < 8; ++j) {
        out->dexp[o * 8 + j] = d;
        out->bexp[o * 8 + j] = -sum;
      }
      const size_t ob = static_cast<size_t>(b) * t + i;  // the block-major copies
      std::memcpy(out->qb.data() + ob * 32, qi + b * 32, 32);
      out->db[ob] = d;
      out->sb[ob] = out->s[o];
      out->ob[ob] = -8 * sum;
    }
    // The 4-block regrouping (kernels.h), padding blocks zero.
    int8_t* q4 = out->q4.data() + static_cast<size_t>(i) * nb4 * 32;
    for (int b = 0; b < nb4; ++b) {
      int8_t* c = q4 + (b / 4) * 128 + (b % 4) * 16;
      const size_t o4 = (static_cast<size_t>(i) * nb4 + b) * 4;
      if (b < nb) {
        std::memcpy(c, qi + b * 32, 16);
        std::memcpy(c + 64, qi + b * 32 + 16, 16);
      } else {
        std::memset(c, 0, 16);
        std::memset(c + 64, 0, 16);
      }
      const size_t o = static_cast<size_t>(i) * nb + b;
      for (int j = 0; j < 4; ++j) {
        out->d4[o4 + j] = b < nb ? out->d[o] : 0.f;
        out->b4[o4 + j] = b < nb ? -2 * out->sumq[o] : 0;
        out->s4[o4 + j] = b < nb ? out->s[o] * 0.25f : 0.f;
      }
    }
  }
}

namespace {

inline float Scale(const QMatrix& w, int r, int b) {
  uint16_t s = w.scales[static_cast<size_t>(r) * (w.kp / w.group) + (b * 32) / w.group];
  return w.bf16_scales ? BF16ToF32(s) : F16ToF32(s);
}

// Unsigned element j of block b of row r, and the block's m (value = u * d + m).
inline int U(const QMatrix& w, const uint8_t* row, int b, int j) {
  if (w.format == WFormat::kQ8) return row[b * 32 + j];
  uint8_t byte = row[b * 16 + (j & 15)];
  return j < 16 ? (byte & 0xF) : (byte >> 4);
}

inline float M(const QMatrix& w, int r, int b, float d) {
  if (w.format == WFormat::kQ4) return -8.f * d;
  if (w.format == WFormat::kQ8) return -128.f * d;
  return F16ToF32(w.mins[static_cast<size_t>(r) * (w.kp / 32) + b]);
}

}  // namespace

void DequantizeRow(const QMatrix& w, int r, float* out) {
  const uint8_t* row = w.packed + static_cast<size_t>(r) * w.RowBytes();
  for (int b = 0; b < w.kp / 32; ++b) {
    float d = Scale(w, r, b);
    if (w.format == WFormat::kQ4Min) {
      float m = M(w, r, b, d);
      for (int j = 0; j < 32; ++j) out[b * 32 + j] = static_cast<float>(U(w, row, b, j)) * d + m;
    } else {  // (u - offset) * d: the exact product the quantiser's reference computes
      int off = w.format == WFormat::kQ4 ? 8 : 128;
      for (int j = 0; j < 32; ++j) out[b * 32 + j] = static_cast<float>(U(w, row, b, j) - off) * d;
    }
  }
}

namespace {

void DecodeRow(const QMatrix& w, int r, float* out) { DequantizeRow(w, r, out); }

void MatVecScalar(const QMatrix& w, const float* x, float* y, int r0, int r1) {
  if (w.format != WFormat::kQ4) {
    std::vector<float> row(w.kp);
    for (int r = r0; r < r1; ++r) {
      DecodeRow(w, r, row.data());
      float acc = 0.f;
      for (int k = 0; k < w.kp; ++k) acc += row[k] * x[k];
      y[r] = acc;
    }
    return;
  }
  const int blocks_per_group = w.group / 32;
  for (int r = r0; r < r1; ++r) {
    const uint8_t* p = w.packed + static_cast<size_t>(r) * (w.kp / 2);
    float acc = 0.f;
    for (int g = 0; g < w.kp / w.group; ++g) {
      float gacc = 0.f;
      for (int b = g * blocks_per_group; b < (g + 1) * blocks_per_group; ++b) {
        const uint8_t* pb = p + b * 16;
        const float* xb = x + b * 32;
        for (int j = 0; j < 16; ++j) {
          gacc += static_cast<float>(static_cast<int>(pb[j] & 0xF) - 8) * xb[j];
          gacc += static_cast<float>(static_cast<int>(pb[j] >> 4) - 8) * xb[16 + j];
        }
      }
      acc += gacc * Scale(w, r, g * blocks_per_group);
    }
    y[r] = acc;
  }
}

void MatMulScalar(const QMatrix& w, const float* x, int t, int ldx, float* y, int ldy, int r0,
                  int r1) {
  std::vector<float> row(w.kp);
  for (int r = r0; r < r1; ++r) {
    DecodeRow(w, r, row.data());
    for (int i = 0; i < t; ++i) {
      const float* xi = x + static_cast<size_t>(i) * ldx;
      float acc = 0.f;
      for (int k = 0; k < w.kp; ++k) acc += row[k] * xi[k];
      y[static_cast<size_t>(i) * ldy + r] = acc;
    }
  }
}

void QMatMulScalar(const QMatrix& w, const QActs& x, float* y, int ldy, int r0, int r1) {
  const int nb = w.kp / 32;
  for (int r = r0; r < r1; ++r) {
    const uint8_t* row = w.packed + static_cast<size_t>(r) * w.RowBytes();
    for (int i = 0; i < x.t; ++i) {
      const int8_t* q = x.qrow(i);
      float acc = 0.f;
      for (int b = 0; b < nb; ++b) {
        int32_t dot = 0;
        for (int j = 0; j < 32; ++j) dot += U(w, row, b, j) * q[b * 32 + j];
        size_t o = static_cast<size_t>(i) * nb + b;
        float d = Scale(w, r, b);
        if (w.format == WFormat::kQ4Min) {
          acc += d * x.d[o] * static_cast<float>(dot) + M(w, r, b, d) * x.s[o];
        } else {
          int off = w.format == WFormat::kQ4 ? 8 : 128;
          acc += d * x.d[o] * static_cast<float>(dot - off * x.sumq[o]);
        }
      }
      y[static_cast<size_t>(i) * ldy + r] = acc;
    }
  }
}

float DotF16Scalar(const float* q, const uint16_t* k, int n) {
  float acc = 0.f;
  for (int i = 0; i < n; ++i) acc += q[i] * F16ToF32(k[i]);
  return acc;
}

void AxpyF16Scalar(float a, const uint16_t* v, float* o, int n) {
  for (int i = 0; i < n; ++i) o[i] += a * F16ToF32(v[i]);
}

void ToF16Scalar(const float* x, uint16_t* y, int n) {
  for (int i = 0; i < n; ++i) y[i] = F32ToF16(x[i]);
}

}  // namespace

void GatedActScalar(float* g, const float* u, int n, bool gelu) {
  const float c = 0.7978845608028654f;  // sqrt(2/pi)
  for (int i = 0; i < n; ++i) {
    const float x = g[i];
    const float a = gelu ? 0.5f * x * (1.0f + std::tanh(c * (x + 0.044715f * x * x * x))) : x / (1.0f + std::exp(-x));
    g[i] = a * u[i];
  }
}

void AttendF16Scalar(const float* q, int nh, int dh, const uint16_t* k, const uint16_t* v,
                     size_t stride, int len, float scale, float* scores, float* o) {
  for (int h = 0; h < nh; ++h) {
    float* s = scores + static_cast<size_t>(h) * len;
    for (int j = 0; j < len; ++j) s[j] = DotF16Scalar(q + h * dh, k + j * stride, dh) * scale;
    float mx = -INFINITY, sum = 0.f;
    for (int j = 0; j < len; ++j) mx = std::max(mx, s[j]);
    for (int j = 0; j < len; ++j) { s[j] = std::exp(s[j] - mx); sum += s[j]; }
    const float inv = 1.0f / sum;
    float* oh = o + h * dh;
    std::fill(oh, oh + dh, 0.f);
    for (int j = 0; j < len; ++j) {
      s[j] *= inv;
      AxpyF16Scalar(s[j], v + j * stride, oh, dh);
    }
  }
}

namespace {

const Kernels kScalar = {"scalar", MatVecScalar, MatMulScalar, QMatMulScalar,
                         DotF16Scalar, AxpyF16Scalar, ToF16Scalar, 1};

std::string ProcCpuinfoField(const std::string& key) {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind(key, 0) == 0) {
      size_t colon = line.find(':');
      if (colon != std::string::npos) return line.substr(colon + 2);
    }
  }
  return "";
}

}  // namespace

const Kernels& ScalarKernels() { return kScalar; }

bool CpuSupports(const std::string& isa) {
#if defined(__x86_64__)
  __builtin_cpu_init();
  bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
              __builtin_cpu_supports("f16c");
  if (isa == "avx2") return avx2;
  if (isa == "avxvnni") return avx2 && __builtin_cpu_supports("avxvnni");
  if (isa == "avx512")
    return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
  if (isa == "amx") {
    unsigned a, b, c, d;
    if (!CpuSupports("avx512") || !__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    const bool tile = (d >> 24) & 1, int8 = (d >> 25) & 1;  // CPUID.7.0:EDX AMX-TILE, AMX-INT8
    return tile && int8 && AmxUsable();
  }
  return false;
#elif defined(__aarch64__)
  if (isa == "neon") return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
  return false;
#else
  (void)isa;
  return false;
#endif
}

bool CpuHasAvx2Fma() { return CpuSupports("avx2"); }

namespace {

const Kernels* ByName(const std::string& name) {
  if (name == "avx2") return Avx2Kernels();
  if (name == "avxvnni") return AvxVnniKernels();
  if (name == "avx512") return Avx512Kernels();
  if (name == "amx") return AmxKernels();
  if (name == "neon") return NeonKernels();
  return nullptr;
}

// The CPU is asked first: each ISA's table is built inside a function compiled for that ISA
// (the AMX table copies the AVX-512 one with zmm moves), so even building it is an illegal
// instruction on a CPU without it.
const Kernels* Usable(const std::string& name) {
  return CpuSupports(name) ? ByName(name) : nullptr;
}

}  // namespace

std::vector<std::string> AvailableKernels() {
  std::vector<std::string> out = {"scalar"};
  for (const char* n : {"avx2", "avxvnni", "avx512", "amx", "neon"})
    if (Usable(n) != nullptr) out.push_back(n);
  return out;
}

const Kernels& SelectKernels(const std::string& which) {
  if (which == "scalar") return kScalar;
  if (which == "auto") {
    for (const char* n : {"amx", "avx512", "avxvnni", "avx2", "neon"})
      if (const Kernels* k = Usable(n)) return *k;
    return kScalar;
  }
  if (which != "avx2" && which != "avxvnni" && which != "avx512" && which != "amx" && which != "neon")
    throw std::invalid_argument("--kernel='" + which + "': expected auto|scalar|avx2|avxvnni|avx512|amx|neon");
  if (!CpuSupports(which)) throw std::invalid_argument("--kernel=" + which + ": this CPU lacks it");
  const Kernels* k = ByName(which);
  if (k == nullptr) throw std::invalid_argument("--kernel=" + which + ": not built for this architecture");
  return *k;
}

std::string CpuDescription() {
  std::string name = ProcCpuinfoField("model name");
  if (name.empty()) name = "CPU implementer " + ProcCpuinfoField("CPU implementer") + " part " +
                           ProcCpuinfoField("CPU part");
  const std::string family = ProcCpuinfoField("cpu family"), model = ProcCpuinfoField("model");
  if (!family.empty()) name += " (family " + family + " model " + model + ")";
  std::string isa;
  for (const char* n : {"avx2", "avxvnni", "avx512", "amx", "neon"})
    if (CpuSupports(n)) isa += std::string(isa.empty() ? "" : ",") + n;
  return name + " [ISA: " + (isa.empty() ? "scalar only" : isa) + "]";
}

}  // namespace gemini::runtime
