// A fixed pool that splits a range statically: job [0, n) is cut into one balanced part per
// thread (boundaries multiples of `align`), and thread i runs part i. A part its owner has not
// started (the OS did not schedule it on a busy machine) is taken by whoever finishes first, so
// one descheduled worker never stalls a job. Idle workers spin briefly (decode issues hundreds
// of jobs per token, microseconds apart) and sleep on a condition variable after ~300 pauses
// (~15 us here) without work; the caller waits ~100 pauses, then yields. Short spins matter on
// a shared machine: a spinning thread holds a core the working thread needs (2-thread decode at
// load ~12: 55-91 tokens/s with ~1 ms spins, 102-155 with these). A job allocates nothing: the
// callable is passed by pointer, never wrapped in std::function.
#ifndef GEMINI_CSRC_RUNTIME_THREAD_POOL_H_
#define GEMINI_CSRC_RUNTIME_THREAD_POOL_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace gemini::runtime {

class ThreadPool {
 public:
  // pin: bind thread i to CPU i (sched_setaffinity); off by default because on a shared
  // machine a pinned thread cannot move away from a core someone else is using.
  explicit ThreadPool(int threads, bool pin = false);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return threads_; }
  // Calls fn(begin, end) — or fn(begin, end, part) with part in [0, size()) unique among the
  // concurrent calls — on disjoint parts covering [0, n); returns when all are done.
  template <class F>
  void ParallelFor(int n, F&& fn, int align = 8) {
    using Fn = std::remove_reference_t<F>;
    Run(n, align, [](void* ctx, int b, int e, int part) {
      if constexpr (std::is_invocable_v<Fn&, int, int, int>) (*static_cast<Fn*>(ctx))(b, e, part);
      else (*static_cast<Fn*>(ctx))(b, e);
    }, const_cast<void*>(static_cast<const void*>(&fn)));
  }

 private:
  using RawFn = void (*)(void*, int, int, int);
  void Run(int n, int align, RawFn fn, void* ctx);
  void Worker(int index);
  // Runs part `first` if still unclaimed, then any other unclaimed part of job `gen`.
  void Work(uint64_t gen, int first);

  int threads_;
  bool pin_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> sleepers_{0};
  // Part p of job g is claimed by moving claimed_[p] from below g to g; every part of a job is
  // claimed before the next starts, so a late worker of an older job finds nothing to claim.
  std::unique_ptr<std::atomic<uint64_t>[]> claimed_;
  std::atomic<int> done_{0};          // parts finished in the current job
  std::atomic<bool> stop_{false};
  // The current job (written before generation_ is published, read after a claim succeeds).
  RawFn fn_ = nullptr;
  void* ctx_ = nullptr;
  int n_ = 0, part_len_ = 0, parts_ = 0;
};

}  // namespace gemini::runtime

#endif  // GEMINI_CSRC_RUNTIME_THREAD_POOL_H_
