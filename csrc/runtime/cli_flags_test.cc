// Flags: values parsed whole and range-checked as 64-bit before narrowing, every refusal
// naming the flag and the value as written. Prints "N passed, N failed".
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

#include "csrc/runtime/cli_flags.h"

namespace {
using gemini::runtime::Flags;
int passed = 0, failed = 0;

void Expect(bool ok, const std::string& what) {
  if (ok) { ++passed; return; }
  ++failed;
  std::printf("FAIL %s\n", what.c_str());
}

Flags Make(std::vector<std::string> args) {
  static const std::map<std::string, bool> known = {
      {"n", true}, {"ids", true}, {"seed", true}, {"p", true}, {"on", false}};
  std::vector<char*> argv = {const_cast<char*>("prog")};
  for (auto& a : args) argv.push_back(&a[0]);
  return Flags::Parse(static_cast<int>(argv.size()), argv.data(), known);
}

// The message of what `f` throws ("" if nothing).
template <typename F>
std::string Refusal(F f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}
}  // namespace

int main() {
  auto Int = [](const std::string& v) { return Make({"--n", v}).Int("n", 7, 1, 2147483647); };
  Expect(Int("12") == 12 && Make({"--n=5"}).Int("n", 7, 1, 9) == 5, "plain integers");
  Expect(Make({}).Int("n", 7, 1, 9) == 7, "fallback when absent");
  for (const std::string v : {"4294967297", "-1", "0", "2147483648", "99999999999999999999",
                              "12abc", "", "1.5", "+3", " 3", "0x10"}) {
    const std::string msg = Refusal([&] { Int(v); });
    Expect(msg == "--n=" + v + ": must be an integer in [1, 2147483647]", "--n=" + v + " -> '" + msg + "'");
  }
  auto Ids = [](const std::string& v) { return Make({"--ids", v}).IntList("ids", 0, 383); };
  Expect(Ids("5,17,383") == std::vector<int64_t>({5, 17, 383}), "id list");
  Expect(Refusal([&] { Ids("1,4294967297"); }) ==
             "--ids=1,4294967297: item 1 '4294967297' must be an integer in [0, 383]",
         "id past 2^32 " + Refusal([&] { Ids("1,4294967297"); }));
  for (const std::string v : {"384", "-1", "1,,2", "1,2,", "", "a", "1;2"})
    Expect(!Refusal([&] { Ids(v); }).empty(), "--ids=" + v + " refused");
  Expect(Make({"--seed", "18446744073709551615"}).Uint64("seed", 0) == 18446744073709551615ull, "max seed");
  for (const std::string v : {"-1", "18446744073709551616", "x"})
    Expect(Refusal([&] { Make({"--seed", v}).Uint64("seed", 0); }) ==
               "--seed=" + v + ": must be an integer in [0, 18446744073709551615]", "seed " + v);
  auto P = [](const std::string& v) { return Make({"--p", v}).Float("p", 1, 0, 1, true); };
  Expect(P("0.5") == 0.5 && P("1") == 1.0, "floats");
  for (const std::string v : {"0", "nan", "inf", "1.01", "0.5x", "", " 0.5", "0x1p-1", "1e999"})
    Expect(Refusal([&] { P(v); }) == "--p=" + v + ": must be a number in (0, 1]", "--p=" + v);
  Expect(Refusal([&] { Make({"--bogus", "1"}); }) == "unknown flag --bogus", "unknown flag");
  Expect(Refusal([&] { Make({"--n"}); }) == "--n needs a value", "missing value");
  Expect(Refusal([&] { Make({"--n", "1", "--n", "2"}); }) == "--n given twice", "repeated flag");
  Expect(!Refusal([&] { Make({"--on=0"}); }).empty(), "a switch takes no value");
  Expect(Make({"--on"}).Has("on") && Make({"-h"}).help(), "switches and --help");
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
