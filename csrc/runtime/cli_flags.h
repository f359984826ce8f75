// Command-line flags of the runtime's tools: `--name value` or `--name=value`, known names
// only. Numbers are parsed whole (no trailing characters, no silent wrap): integers as 64-bit
// and range-checked before any narrowing, floats finite. Every refusal is an
// std::invalid_argument naming the flag and the value as written.
#ifndef GEMINI_CSRC_RUNTIME_CLI_FLAGS_H_
#define GEMINI_CSRC_RUNTIME_CLI_FLAGS_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace gemini::runtime {

class Flags {
 public:
  // `known`: flag name -> whether it takes a value (else it is a switch). "--help"/"-h" set
  // help() instead of failing.
  static Flags Parse(int argc, char** argv, const std::map<std::string, bool>& known);

  bool help() const { return help_; }
  bool Has(const std::string& name) const { return values_.count(name) > 0; }
  std::string Get(const std::string& name, const std::string& fallback) const;
  // The flag as an integer in [lo, hi] (the fallback when absent).
  int64_t Int(const std::string& name, int64_t fallback, int64_t lo, int64_t hi) const;
  // The flag as an unsigned 64-bit integer (seeds: every value of [0, 2^64) is meaningful).
  uint64_t Uint64(const std::string& name, uint64_t fallback) const;
  // The flag as a finite number in [lo, hi], or in (lo, hi] when `lo_open`.
  double Float(const std::string& name, double fallback, double lo, double hi,
               bool lo_open = false) const;
  // A comma-separated list of integers, each in [lo, hi]; empty items are refused.
  std::vector<int64_t> IntList(const std::string& name, int64_t lo, int64_t hi) const;

 private:
  std::map<std::string, std::string> values_;
  bool help_ = false;
};

// Parses all of `text` as a base-10 signed 64-bit integer (optional '-', digits only).
bool ParseInt64(const std::string& text, int64_t* out);

}  // namespace gemini::runtime

#endif  // GEMINI_CSRC_RUNTIME_CLI_FLAGS_H_
