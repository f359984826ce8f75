// C++ loader checks without Python: threaded prefetch gives the same stream as synchronous
// packing, Restore() replays exactly, and Close() with batches in flight is clean. Built with
// -fsanitize=thread by hand (see the final report) to check the prefetch threads.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

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

}  // namespace

int main() {
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
