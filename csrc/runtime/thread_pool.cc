#include "csrc/runtime/thread_pool.h"

#include <immintrin.h>

#include <algorithm>
#include <stdexcept>
#include <string>

namespace gemini::runtime {

ThreadPool::ThreadPool(int threads) : threads_(threads) {
  if (threads < 1 || threads > 256)
    throw std::invalid_argument("--threads=" + std::to_string(threads) + " must be in 1..256");
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this, i] { Worker(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    generation_.fetch_add(1);
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::Run(int id) {
  int chunk = (n_ + threads_ - 1) / threads_;
  chunk = (chunk + align_ - 1) / align_ * align_;
  int begin = std::min(n_, id * chunk), end = std::min(n_, begin + chunk);
  if (begin < end) (*fn_)(begin, end);
}

void ThreadPool::Worker(int id) {
  uint64_t seen = 0;
  while (true) {
    uint64_t gen = generation_.load(std::memory_order_acquire);
    for (int spin = 0; gen == seen && spin < 200000; ++spin) {
      _mm_pause();
      gen = generation_.load(std::memory_order_acquire);
    }
    if (gen == seen) {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return generation_.load() != seen; });
      gen = generation_.load();
    }
    seen = gen;
    if (stop_) return;
    Run(id);
    pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

void ThreadPool::ParallelFor(int n, const std::function<void(int, int)>& fn, int align) {
  if (threads_ == 1 || n <= align) {
    if (n > 0) fn(0, n);
    return;
  }
  fn_ = &fn;
  n_ = n;
  align_ = align;
  pending_.store(threads_ - 1, std::memory_order_release);
  {
    std::lock_guard<std::mutex> lock(mu_);
    generation_.fetch_add(1, std::memory_order_acq_rel);
  }
  cv_.notify_all();
  Run(0);
  while (pending_.load(std::memory_order_acquire) != 0) _mm_pause();
}

}  // namespace gemini::runtime
