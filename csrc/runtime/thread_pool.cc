#include "csrc/runtime/thread_pool.h"

#include <sched.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#if defined(__x86_64__)
#include <immintrin.h>
#define GEMINI_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define GEMINI_CPU_RELAX() asm volatile("yield")
#else
#define GEMINI_CPU_RELAX() ((void)0)
#endif

namespace gemini::runtime {
namespace {

void PinTo(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu % CPU_SETSIZE, &set);
  sched_setaffinity(0, sizeof(set), &set);  // best effort: a refusal leaves the thread floating
}

}  // namespace

ThreadPool::ThreadPool(int threads, bool pin) : threads_(threads), pin_(pin) {
  if (threads < 1 || threads > 256)
    throw std::invalid_argument("--threads=" + std::to_string(threads) + " must be in 1..256");
  claimed_.reset(new std::atomic<uint64_t>[threads]);
  for (int i = 0; i < threads; ++i) claimed_[i].store(0);
  if (pin_) PinTo(0);
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

void ThreadPool::Work(uint64_t gen, int first) {
  for (int k = 0; k < threads_; ++k) {
    int part = (first + k) % threads_;
    uint64_t c = claimed_[part].load(std::memory_order_acquire);
    bool mine = false;
    while (c < gen && !(mine = claimed_[part].compare_exchange_weak(c, gen, std::memory_order_acq_rel))) {
    }
    if (!mine) continue;
    if (part < parts_) {
      int b = part * part_len_, e = std::min(n_, b + part_len_);
      fn_(ctx_, b, e, part);
    }
    done_.fetch_add(1, std::memory_order_acq_rel);
  }
}

void ThreadPool::Worker(int index) {
  if (pin_) PinTo(index);
  uint64_t seen = 0;
  while (true) {
    uint64_t gen = generation_.load(std::memory_order_acquire);
    for (int spin = 0; gen == seen && spin < 300; ++spin) {
      GEMINI_CPU_RELAX();
      gen = generation_.load(std::memory_order_acquire);
    }
    if (gen == seen) {
      std::unique_lock<std::mutex> lock(mu_);
      sleepers_.fetch_add(1, std::memory_order_seq_cst);
      cv_.wait(lock, [&] { return generation_.load(std::memory_order_seq_cst) != seen; });
      sleepers_.fetch_sub(1, std::memory_order_seq_cst);
      gen = generation_.load();
    }
    seen = gen;
    if (stop_) return;
    Work(gen, index);
  }
}

void ThreadPool::Run(int n, int align, RawFn fn, void* ctx) {
  if (n <= 0) return;
  align = std::max(1, align);
  if (threads_ == 1 || n <= align) {
    fn(ctx, 0, n, 0);
    return;
  }
  // Balanced parts: ceil(n / threads) rounded up to the alignment.
  int len = (n + threads_ - 1) / threads_;
  len = (len + align - 1) / align * align;
  uint64_t gen = generation_.load(std::memory_order_relaxed) + 1;
  fn_ = fn;
  ctx_ = ctx;
  n_ = n;
  part_len_ = len;
  parts_ = (n + len - 1) / len;
  done_.store(0, std::memory_order_relaxed);
  generation_.store(gen, std::memory_order_seq_cst);  // publishes the job fields above
  if (sleepers_.load(std::memory_order_seq_cst) > 0) {
    { std::lock_guard<std::mutex> lock(mu_); }
    cv_.notify_all();
  }
  Work(gen, 0);
  for (int spin = 0; done_.load(std::memory_order_acquire) != threads_; ++spin) {
    if (spin < 100) GEMINI_CPU_RELAX();
    else std::this_thread::yield();
  }
}

}  // namespace gemini::runtime
