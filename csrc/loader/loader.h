// The packing loader: mixture sampler over sources (staged weights), per-epoch deterministic
// shuffling, multi-host sharding, sequence packing into [batch, seq] blocks, and background
// prefetch threads. Semantics are specified in py/gemini/data/README.md; the pure-Python
// reference (py/gemini/data/reference_loader.py) implements the same algorithm and the tests
// hold the two equal batch for batch.
#ifndef GEMINI_CSRC_LOADER_LOADER_H_
#define GEMINI_CSRC_LOADER_LOADER_H_

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "csrc/loader/shard.h"

namespace gemini::loader {

struct Source {
  std::string name;
  std::vector<std::shared_ptr<Shard>> shards;
};

struct Stage {
  int64_t until_batch;          // Stage applies to batch indices < until_batch; -1 = forever.
  std::vector<double> weights;  // One per source, >= 0, not all 0.
};

struct Options {
  int batch = 1, seq = 1;
  uint64_t seed = 0;
  int process_index = 0, process_count = 1;
  int prefetch = 2;  // Batches produced ahead; 0 = synchronous in Next().
  int threads = 1;   // Packing threads when prefetch > 0.
  // The model's vocabulary (0 = not given): shards whose header vocab_size is larger are
  // refused up front, and every packed id must be below it (and below its shard's own
  // nonzero vocab_size), so an id past the embedding table never reaches training.
  uint32_t vocab_size = 0;
};

// Everything needed to continue the stream exactly (a few integers).
struct State {
  int64_t batch_index = 0;
  uint64_t draws = 0;
  int64_t cur_source = -1;  // -1: no document in progress.
  uint64_t cur_record = 0;  // Record index within the source (concatenated shards).
  uint64_t cur_offset = 0;  // Next (input, target) pair index within that document.
  std::vector<uint64_t> epochs, cursors;  // Per source: epoch, position in this process's slice.
};

// One contiguous run of a document placed in a row.
struct Piece {
  int32_t row, col, len, segment;
  const Shard* shard;
  uint64_t record, start;
};

struct Batch {
  std::shared_ptr<int32_t[]> data;  // 4 * batch * seq: tokens, targets, segment_ids, positions.
  State state_after;
  std::exception_ptr error;
};

// splitmix64 finaliser: the one hash behind every random choice (shared with the reference).
uint64_t Mix64(uint64_t x);

// The sequential, cheap part: decides which document pieces go where.
class Planner {
 public:
  Planner(std::vector<Source> sources, std::vector<Stage> stages, const Options& opt);
  std::vector<Piece> Plan();  // Plans the next batch and advances the state.
  const State& state() const { return state_; }
  void set_state(const State& s);
  size_t num_sources() const { return sources_.size(); }

 private:
  void DrawDocument();
  const std::vector<uint32_t>& Permutation(size_t s, uint64_t epoch);
  std::pair<const Shard*, uint64_t> Locate(size_t s, uint64_t record) const;
  uint64_t SliceSize(size_t s) const;

  std::vector<Source> sources_;
  std::vector<Stage> stages_;
  Options opt_;
  std::vector<std::vector<uint64_t>> starts_;  // Per source: first record of each shard.
  std::vector<uint64_t> totals_;
  std::vector<std::pair<uint64_t, std::vector<uint32_t>>> perms_;  // Cached (epoch, perm).
  State state_;
};

// Reuses batch buffers: a fresh 4*B*S*4-byte allocation per batch is an mmap + page faults +
// munmap, which serialises packing threads on the kernel's mm lock.
class BufferPool : public std::enable_shared_from_this<BufferPool> {
 public:
  BufferPool(size_t elems, size_t keep) : elems_(elems), keep_(keep) {}
  ~BufferPool();
  std::shared_ptr<int32_t[]> Get();

 private:
  void Put(int32_t* p);
  size_t elems_, keep_;
  std::mutex mu_;
  std::vector<int32_t*> free_;
};

// Fills the [4, B, S] int32 buffer for a plan. Throws ShardError (file, record, position,
// value) for an id >= vocab_size (when nonzero) or >= its shard's nonzero vocab_size.
void Fill(const std::vector<Piece>& plan, int batch, int seq, int32_t* out,
          uint32_t vocab_size = 0);

class Loader {
 public:
  Loader(std::vector<Source> sources, std::vector<Stage> stages, const Options& opt);
  ~Loader();
  Batch Next();  // Blocks until the next batch; rethrows a producer's error.
  State state();
  void Restore(const State& s);
  void Close();
  const Options& options() const { return opt_; }
  size_t num_sources() const { return planner_.num_sources(); }

 private:
  void Start();
  void Stop();
  void Work();

  Options opt_;
  Planner planner_;
  std::shared_ptr<BufferPool> pool_;
  std::mutex mu_;
  std::condition_variable cv_produce_, cv_consume_;
  std::vector<std::thread> workers_;
  std::map<uint64_t, Batch> ready_;
  uint64_t next_plan_ = 0, next_take_ = 0;
  bool stop_ = false;
  State last_state_;
};

}  // namespace gemini::loader

#endif  // GEMINI_CSRC_LOADER_LOADER_H_
