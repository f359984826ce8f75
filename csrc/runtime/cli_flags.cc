#include "csrc/runtime/cli_flags.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <sstream>
#include <stdexcept>

namespace gemini::runtime {
namespace {

[[noreturn]] void Refuse(const std::string& name, const std::string& value,
                         const std::string& need) {
  throw std::invalid_argument("--" + name + "=" + value + ": " + need);
}

std::string Range(int64_t lo, int64_t hi) {
  return "[" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
}

std::string Num(double x) {
  std::ostringstream s;
  s << x;
  return s.str();
}

}  // namespace

bool ParseInt64(const std::string& text, int64_t* out) {
  size_t i = text.size() > 0 && text[0] == '-' ? 1 : 0;
  if (i == text.size()) return false;
  for (size_t j = i; j < text.size(); ++j)
    if (text[j] < '0' || text[j] > '9') return false;
  errno = 0;
  char* end = nullptr;
  long long v = std::strtoll(text.c_str(), &end, 10);
  if (errno == ERANGE || *end != '\0') return false;
  *out = static_cast<int64_t>(v);
  return true;
}

Flags Flags::Parse(int argc, char** argv, const std::map<std::string, bool>& known) {
  Flags f;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      f.help_ = true;
      continue;
    }
    if (a.rfind("--", 0) != 0) throw std::invalid_argument("unexpected argument '" + a + "'");
    a = a.substr(2);
    std::string value;
    const size_t eq = a.find('=');
    if (eq != std::string::npos) {
      value = a.substr(eq + 1);
      a = a.substr(0, eq);
    }
    auto it = known.find(a);
    if (it == known.end()) throw std::invalid_argument("unknown flag --" + a);
    if (!it->second && eq != std::string::npos)
      throw std::invalid_argument("--" + a + " is a switch and takes no value (got '" + value + "')");
    if (it->second && eq == std::string::npos) {
      if (i + 1 >= argc) throw std::invalid_argument("--" + a + " needs a value");
      value = argv[++i];
    }
    if (f.values_.count(a)) throw std::invalid_argument("--" + a + " given twice");
    f.values_[a] = it->second ? value : "1";
  }
  return f;
}

std::string Flags::Get(const std::string& name, const std::string& fallback) const {
  auto it = values_.find(name);
  return it == values_.end() ? fallback : it->second;
}

int64_t Flags::Int(const std::string& name, int64_t fallback, int64_t lo, int64_t hi) const {
  if (!Has(name)) return fallback;
  const std::string& s = values_.at(name);
  int64_t v;
  if (!ParseInt64(s, &v) || v < lo || v > hi) Refuse(name, s, "must be an integer in " + Range(lo, hi));
  return v;
}

uint64_t Flags::Uint64(const std::string& name, uint64_t fallback) const {
  if (!Has(name)) return fallback;
  const std::string& s = values_.at(name);
  bool digits = !s.empty();
  for (char c : s) digits = digits && c >= '0' && c <= '9';
  errno = 0;
  char* end = nullptr;
  unsigned long long v = digits ? std::strtoull(s.c_str(), &end, 10) : 0;
  if (!digits || errno == ERANGE || *end != '\0')
    Refuse(name, s, "must be an integer in [0, 18446744073709551615]");
  return static_cast<uint64_t>(v);
}

double Flags::Float(const std::string& name, double fallback, double lo, double hi,
                    bool lo_open) const {
  if (!Has(name)) return fallback;
  const std::string& s = values_.at(name);
  // Decimal notation only (strtod alone would also take " 1", "0x1p-1", "inf", "nan").
  const bool chars = !s.empty() && s.find_first_not_of("0123456789+-.eE") == std::string::npos;
  char* end = nullptr;
  const double v = chars ? std::strtod(s.c_str(), &end) : 0.0;
  const bool parsed = chars && *end == '\0' && std::isfinite(v);
  if (!parsed || v > hi || (lo_open ? v <= lo : v < lo))
    Refuse(name, s, "must be a number in " + std::string(lo_open ? "(" : "[") + Num(lo) + ", " +
                        Num(hi) + "]");
  return v;
}

std::vector<int64_t> Flags::IntList(const std::string& name, int64_t lo, int64_t hi) const {
  std::vector<int64_t> out;
  if (!Has(name)) return out;
  const std::string& s = values_.at(name);
  size_t start = 0;
  while (true) {
    const size_t comma = s.find(',', start);
    const std::string item = s.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    int64_t v;
    if (!ParseInt64(item, &v) || v < lo || v > hi)
      Refuse(name, s, "item " + std::to_string(out.size()) + " '" + item +
                          "' must be an integer in " + Range(lo, hi));
    out.push_back(v);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

}  // namespace gemini::runtime
