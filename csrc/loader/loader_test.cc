// C++ loader checks without Python: threaded prefetch gives the same stream as synchronous
// packing, Restore() replays exactly, Close() with batches in flight is clean, and token ids
// past the vocabulary are refused by the reader and the loader. Built with
// -fsanitize=thread by hand (see the final report) to check the prefetch threads.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "csrc/common/crc32c.h"
#include "csrc/loader/encode.h"
#include "csrc/loader/loader.h"

namespace {

using namespace gemini::loader;

int failures = 0;
#define CHECK(c)                                                  \
  do {                                                            \
    if (!(c)) {                                                   \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #c); \
      ++failures;                                                 \
    }                                                             \
  } while (0)

std::vector<Source> MakeSources() {
  std::mt19937_64 rng(7);
  std::vector<Source> out;
  for (int s = 0; s < 2; ++s) {
    Source src{"s" + std::to_string(s), {}};
    for (int f = 0; f < 2; ++f) {
      std::vector<DocIn> docs;
      for (int d = 0; d < 25; ++d) {
        DocIn doc;
        for (int j = 0, n = rng() % 70; j < n; ++j) doc.tokens.push_back(rng() % 5000);
        docs.push_back(doc);
      }
      src.shards.push_back(Shard::FromBytes(EncodeShard(docs, 5000), "mem"));
    }
    out.push_back(src);
  }
  return out;
}

std::vector<std::vector<int32_t>> Take(Loader& l, int n) {
  std::vector<std::vector<int32_t>> out;
  const size_t len = 4ull * l.options().batch * l.options().seq;
  for (int i = 0; i < n; ++i) {
    Batch b = l.Next();
    out.emplace_back(b.data.get(), b.data.get() + len);
  }
  return out;
}

// A checksum-valid shard whose header claims vocab_size `vocab` while record 1 holds id 65535
// at position 2 (encoded with vocab 0, then the header patched and its CRC recomputed).
std::string HostileVocabShard(uint32_t vocab) {
  std::vector<DocIn> docs(3);
  docs[0].tokens = {1, 2, 3, 4};
  docs[1].tokens = {5, 6, 65535, 7};
  docs[2].tokens = {8, 9, 10};
  std::string d = EncodeShard(docs, 0);
  std::memcpy(&d[40], &vocab, 4);
  const uint32_t crc = gemini::Crc32c(d.data(), 60);
  std::memcpy(&d[60], &crc, 4);
  return d;
}

template <typename F>
std::string ErrorOf(F f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

bool Has(const std::string& s, const std::string& part) {
  if (s.find(part) != std::string::npos) return true;
  std::fprintf(stderr, "message '%s' lacks '%s'\n", s.c_str(), part.c_str());
  return false;
}

// Token ids >= vocab_size: refused by the reader (verify=true: on open; verify=false: by
// VerifyRecord) and by the loader while packing, naming file, record, position and value.
void TestTokenIdsPastTheVocabulary() {
  const std::string bytes = HostileVocabShard(8192);
  const std::string want = "shard 'v.gshd': record 1 at byte offset ";
  const std::string what = "token id 65535 at position 2 is >= the shard's vocab_size 8192";
  std::string e = ErrorOf([&] { Shard::FromBytes(bytes, "v.gshd"); });
  CHECK(Has(e, want) && Has(e, what));

  auto lax = Shard::FromBytes(bytes, "v.gshd", /*verify=*/false);
  CHECK(Has(ErrorOf([&] { lax->VerifyRecord(1); }), what));
  CHECK(ErrorOf([&] { lax->VerifyRecord(0); }).empty());
  Options o;
  o.batch = 1;
  o.seq = 16;  // Every record lands in the first batch.
  o.prefetch = 0;
  Loader sync({Source{"s", {lax}}}, {}, o);
  CHECK(Has(ErrorOf([&] { sync.Next(); }), what));
  o.prefetch = 2;
  Loader threaded({Source{"s", {lax}}}, {}, o);
  CHECK(Has(ErrorOf([&] { threaded.Next(); }), what));

  // A shard of unknown vocabulary (0) against the model's vocab_size given to the loader.
  auto unknown = Shard::FromBytes(HostileVocabShard(0), "u.gshd");
  o.vocab_size = 8192;
  Loader model({Source{"s", {unknown}}}, {}, o);
  CHECK(Has(ErrorOf([&] { model.Next(); }), "token id 65535 at position 2 is >= the model's vocab_size 8192"));
  // A shard tokenized with a larger vocabulary than the model's is refused up front.
  auto big = Shard::FromBytes(HostileVocabShard(70000), "big.gshd");
  CHECK(Has(ErrorOf([&] { Loader l({Source{"s", {big}}}, {}, o); }),
            "shard 'big.gshd' of source 's' has vocab_size 70000, larger than the model's vocab_size 8192"));
  // In range everywhere: loads, and the batch holds the ids as written.
  o.vocab_size = 70000;
  Loader ok({Source{"s", {big}}}, {}, o);
  Batch b = ok.Next();
  std::vector<int32_t> toks(b.data.get(), b.data.get() + 16);  // 8 pairs per epoch: two epochs.
  CHECK(std::count(toks.begin(), toks.end(), 65535) == 2);
}

}  // namespace

int main() {
  TestTokenIdsPastTheVocabulary();
  std::vector<Stage> stages = {{10, {1.0, 3.0}}, {-1, {2.0, 1.0}}};
  Options sync;
  sync.batch = 3;
  sync.seq = 40;
  sync.seed = 11;
  sync.prefetch = 0;
  Options threaded = sync;
  threaded.prefetch = 5;
  threaded.threads = 2;

  Loader a(MakeSources(), stages, sync), b(MakeSources(), stages, threaded);
  auto want = Take(a, 60), got = Take(b, 60);
  CHECK(want == got);

  // Restore mid-stream (with batches in flight) replays the same batches.
  Loader c(MakeSources(), stages, threaded);
  Take(c, 20);
  State s = c.state();
  CHECK(s.batch_index == 20);
  auto after = Take(c, 15);
  c.Restore(s);
  CHECK(Take(c, 15) == after);
  CHECK(std::vector<std::vector<int32_t>>(want.begin() + 20, want.begin() + 35) == after);

  // Segments: ids increase by one from 1 within a row; positions restart at 0.
  for (const auto& batch : want) {
    const int32_t* seg = batch.data() + 2 * 3 * 40;
    const int32_t* pos = batch.data() + 3 * 3 * 40;
    for (int r = 0; r < 3; ++r) {
      CHECK(seg[r * 40] == 1 && pos[r * 40] == 0);
      for (int j = 1; j < 40; ++j) {
        const int32_t ds = seg[r * 40 + j] - seg[r * 40 + j - 1];
        CHECK(ds == 0 || ds == 1);
        CHECK(pos[r * 40 + j] == (ds ? 0 : pos[r * 40 + j - 1] + 1));
      }
    }
  }
  c.Close();  // Threads stop with batches queued; destructors run after.
  if (failures) return 1;
  std::printf("loader_test: ok\n");
  return 0;
}
