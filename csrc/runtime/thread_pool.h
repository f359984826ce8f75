// A fixed pool that splits row ranges across threads. Chunks are claimed from a shared
// counter, so a worker the OS has not scheduled (a busy machine) never stalls a job: the
// caller simply takes the remaining chunks itself. Idle workers spin briefly (decode issues
// hundreds of short matvecs per token) and then sleep on a condition variable.
#ifndef GEMINI_CSRC_RUNTIME_THREAD_POOL_H_
#define GEMINI_CSRC_RUNTIME_THREAD_POOL_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace gemini::runtime {

class ThreadPool {
 public:
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return threads_; }
  // Calls fn(begin, end) on disjoint chunks covering [0, n), chunk boundaries multiples of
  // `align`; returns when all are done. The calling thread works too.
  void ParallelFor(int n, const std::function<void(int, int)>& fn, int align = 8);

 private:
  void Worker();
  // Claims and runs chunks of job `gen` until none are left.
  void Drain(uint32_t gen);

  int threads_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<uint32_t> generation_{0};
  std::atomic<uint64_t> claim_{0};   // (generation << 32) | next chunk index
  std::atomic<int> done_{0};         // chunks finished in the current job
  std::atomic<bool> stop_{false};
  std::atomic<const std::function<void(int, int)>*> fn_{nullptr};
  std::atomic<int> n_{0}, chunk_{0}, chunks_{0};
};

}  // namespace gemini::runtime

#endif  // GEMINI_CSRC_RUNTIME_THREAD_POOL_H_
