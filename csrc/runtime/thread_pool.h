// A fixed pool that splits row ranges across threads. Workers spin briefly between jobs
// (decode issues hundreds of short matvecs per token) and then sleep on a condition variable.
#ifndef GEMINI_CSRC_RUNTIME_THREAD_POOL_H_
#define GEMINI_CSRC_RUNTIME_THREAD_POOL_H_

#include <atomic>
#include <condition_variable>
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
  // `align`; returns when all are done. The calling thread takes the first chunk.
  void ParallelFor(int n, const std::function<void(int, int)>& fn, int align = 8);

 private:
  void Worker(int id);
  void Run(int id);

  int threads_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  const std::function<void(int, int)>* fn_ = nullptr;
  int n_ = 0, align_ = 8;
};

}  // namespace gemini::runtime

#endif  // GEMINI_CSRC_RUNTIME_THREAD_POOL_H_
