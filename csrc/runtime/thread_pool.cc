#include "csrc/runtime/thread_pool.h"

#include <immintrin.h>

#include <algorithm>
#include <stdexcept>
#include <string>

namespace gemini::runtime {

ThreadPool::ThreadPool(int threads) : threads_(threads) {
  if (threads < 1 || threads > 256)
    throw std::invalid_argument("--threads=" + std::to_string(threads) + " must be in 1..256");
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { Worker(); });
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

void ThreadPool::Drain(uint32_t gen) {
  while (true) {
    uint64_t c = claim_.load(std::memory_order_acquire);
    if (static_cast<uint32_t>(c >> 32) != gen) return;
    // Job fields are read before the claim; a successful CAS proves they were for `gen`.
    const auto* fn = fn_.load(std::memory_order_acquire);
    int n = n_.load(std::memory_order_acquire), chunk = chunk_.load(std::memory_order_acquire);
    int chunks = chunks_.load(std::memory_order_acquire);
    uint32_t idx = static_cast<uint32_t>(c);
    if (static_cast<int>(idx) >= chunks) return;
    if (!claim_.compare_exchange_weak(c, c + 1, std::memory_order_acq_rel)) continue;
    int begin = static_cast<int>(idx) * chunk, end = std::min(n, begin + chunk);
    (*fn)(begin, end);
    done_.fetch_add(1, std::memory_order_acq_rel);
  }
}

void ThreadPool::Worker() {
  uint32_t seen = 0;
  while (true) {
    uint32_t gen = generation_.load(std::memory_order_acquire);
    for (int spin = 0; gen == seen && spin < 100000; ++spin) {
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
    Drain(gen);
  }
}

void ThreadPool::ParallelFor(int n, const std::function<void(int, int)>& fn, int align) {
  if (n <= 0) return;
  if (threads_ == 1 || n <= align) {
    fn(0, n);
    return;
  }
  // A few chunks per thread balance uneven progress without much claiming overhead.
  int chunk = (n + 4 * threads_ - 1) / (4 * threads_);
  chunk = std::max(align, (chunk + align - 1) / align * align);
  int chunks = (n + chunk - 1) / chunk;
  uint32_t gen = generation_.load() + 1;
  fn_.store(&fn, std::memory_order_release);
  n_.store(n, std::memory_order_release);
  chunk_.store(chunk, std::memory_order_release);
  chunks_.store(chunks, std::memory_order_release);
  done_.store(0, std::memory_order_release);
  claim_.store(static_cast<uint64_t>(gen) << 32, std::memory_order_release);
  {
    std::lock_guard<std::mutex> lock(mu_);
    generation_.store(gen, std::memory_order_release);
  }
  cv_.notify_all();
  Drain(gen);
  for (int spin = 0; done_.load(std::memory_order_acquire) != chunks; ++spin) {
    if (spin < 2000) _mm_pause();
    else std::this_thread::yield();
  }
}

}  // namespace gemini::runtime
