#include "csrc/loader/loader.h"

#include <algorithm>
#include <numeric>
#include <stdexcept>

namespace gemini::loader {

uint64_t Mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

Planner::Planner(std::vector<Source> sources, std::vector<Stage> stages, const Options& opt)
    : sources_(std::move(sources)), stages_(std::move(stages)), opt_(opt) {
  if (sources_.empty()) throw std::invalid_argument("loader: no sources");
  if (opt_.batch < 1 || opt_.seq < 1)
    throw std::invalid_argument("loader: batch and seq must be >= 1");
  if (opt_.process_count < 1 || opt_.process_index < 0 ||
      opt_.process_index >= opt_.process_count)
    throw std::invalid_argument("loader: process_index " + std::to_string(opt_.process_index) +
                                " not in [0, process_count=" +
                                std::to_string(opt_.process_count) + ")");
  if (stages_.empty()) stages_.push_back(Stage{-1, std::vector<double>(sources_.size(), 1.0)});
  for (const Stage& st : stages_) {
    if (st.weights.size() != sources_.size())
      throw std::invalid_argument("loader: a stage has " + std::to_string(st.weights.size()) +
                                  " weights for " + std::to_string(sources_.size()) + " sources");
    double total = 0;
    for (double w : st.weights) {
      if (!(w >= 0)) throw std::invalid_argument("loader: negative or NaN mixture weight");
      total += w;
    }
    if (!(total > 0)) throw std::invalid_argument("loader: a stage's weights are all zero");
  }
  for (size_t s = 0; s < sources_.size(); ++s) {
    std::vector<uint64_t> st;
    uint64_t total = 0;
    for (const auto& sh : sources_[s].shards) {
      if (opt_.vocab_size != 0 && sh->vocab_size() > opt_.vocab_size)
        throw std::invalid_argument("loader: shard '" + sh->path() + "' of source '" +
                                    sources_[s].name + "' has vocab_size " +
                                    std::to_string(sh->vocab_size()) +
                                    ", larger than the model's vocab_size " +
                                    std::to_string(opt_.vocab_size));
      st.push_back(total);
      total += sh->num_records();
    }
    starts_.push_back(st);
    totals_.push_back(total);
    bool used = false;
    for (const Stage& stg : stages_) used = used || stg.weights[s] > 0;
    if (used && SliceSize(s) == 0)
      throw std::invalid_argument("loader: source '" + sources_[s].name + "' has " +
                                  std::to_string(total) + " records: none for process " +
                                  std::to_string(opt_.process_index) + " of " +
                                  std::to_string(opt_.process_count));
  }
  perms_.resize(sources_.size(), {~0ull, {}});
  state_.epochs.assign(sources_.size(), 0);
  state_.cursors.assign(sources_.size(), 0);
}

uint64_t Planner::SliceSize(size_t s) const {
  const uint64_t n = totals_[s], p = opt_.process_index, c = opt_.process_count;
  return n > p ? (n - p + c - 1) / c : 0;
}

void Planner::set_state(const State& s) {
  if (s.epochs.size() != sources_.size() || s.cursors.size() != sources_.size())
    throw std::invalid_argument("loader state: has " + std::to_string(s.epochs.size()) +
                                " sources, loader has " + std::to_string(sources_.size()));
  for (size_t i = 0; i < sources_.size(); ++i)
    if (s.cursors[i] >= std::max<uint64_t>(SliceSize(i), 1))
      throw std::invalid_argument("loader state: cursor " + std::to_string(s.cursors[i]) +
                                  " out of range for source '" + sources_[i].name + "'");
  if (s.cur_source >= static_cast<int64_t>(sources_.size()) ||
      (s.cur_source >= 0 && s.cur_record >= totals_[s.cur_source]) || s.batch_index < 0)
    throw std::invalid_argument("loader state: current document out of range");
  state_ = s;
}

const std::vector<uint32_t>& Planner::Permutation(size_t s, uint64_t epoch) {
  auto& cache = perms_[s];
  if (cache.first == epoch) return cache.second;
  const uint64_t n = totals_[s];
  std::vector<uint32_t> p(n);
  std::iota(p.begin(), p.end(), 0u);
  const uint64_t base = Mix64(Mix64(Mix64(opt_.seed) + 1000003ull * s + 1) + epoch);
  for (uint64_t i = n; i-- > 1;) std::swap(p[i], p[Mix64(base + i) % (i + 1)]);
  cache = {epoch, std::move(p)};
  return cache.second;
}

std::pair<const Shard*, uint64_t> Planner::Locate(size_t s, uint64_t record) const {
  const auto& st = starts_[s];
  const size_t k = std::upper_bound(st.begin(), st.end(), record) - st.begin() - 1;
  return {sources_[s].shards[k].get(), record - st[k]};
}

void Planner::DrawDocument() {
  const Stage* stage = &stages_.back();
  for (const Stage& st : stages_)
    if (st.until_batch < 0 || state_.batch_index < st.until_batch) {
      stage = &st;
      break;
    }
  const uint64_t h = Mix64(Mix64(Mix64(opt_.seed) + opt_.process_index) + state_.draws);
  state_.draws++;
  const double total = std::accumulate(stage->weights.begin(), stage->weights.end(), 0.0);
  const double u = static_cast<double>(h >> 11) * 0x1.0p-53 * total;
  size_t s = 0;
  double acc = 0;
  for (; s + 1 < stage->weights.size(); ++s) {
    acc += stage->weights[s];
    if (u < acc && stage->weights[s] > 0) break;
  }
  while (stage->weights[s] == 0) --s;  // u rounding onto a zero-weight tail.
  const auto& perm = Permutation(s, state_.epochs[s]);
  const uint64_t pos = opt_.process_index + state_.cursors[s] * opt_.process_count;
  state_.cur_source = static_cast<int64_t>(s);
  state_.cur_record = perm[pos];
  state_.cur_offset = 0;
  if (++state_.cursors[s] == SliceSize(s)) {
    state_.cursors[s] = 0;
    state_.epochs[s]++;
  }
}

std::vector<Piece> Planner::Plan() {
  std::vector<Piece> plan;
  uint64_t barren = 0, limit = 1;
  for (size_t s = 0; s < sources_.size(); ++s) limit += SliceSize(s);
  for (int row = 0; row < opt_.batch; ++row) {
    int col = 0, segment = 0;
    while (col < opt_.seq) {
      if (state_.cur_source < 0) DrawDocument();
      auto [shard, rec] = Locate(state_.cur_source, state_.cur_record);
      const uint64_t len = shard->tokens(rec).count;
      const uint64_t pairs = len > 1 ? len - 1 : 0;
      if (state_.cur_offset >= pairs) {
        state_.cur_source = -1;
        // Documents with < 2 tokens carry no pair; a slice made only of them would spin.
        if (++barren > 2 * limit)
          throw std::runtime_error("loader: no document with >= 2 tokens in this process's data");
        continue;
      }
      barren = 0;
      const int n = static_cast<int>(std::min<uint64_t>(pairs - state_.cur_offset, opt_.seq - col));
      plan.push_back(Piece{row, col, n, ++segment, shard, rec, state_.cur_offset});
      col += n;
      state_.cur_offset += n;
      if (state_.cur_offset >= pairs) state_.cur_source = -1;
    }
  }
  state_.batch_index++;
  return plan;
}

namespace {

// The first id of src[0, n) at or above `limit`, or n.
template <typename T>
int FirstAtOrAbove(const T* src, int n, uint32_t limit) {
  for (int j = 0; j < n; ++j)
    if (src[j] >= limit) return j;
  return n;
}

// Copies a piece's inputs and targets (ids start .. start+len), refusing ids >= limit.
template <typename T>
void CopyPiece(const Piece& p, const T* src, uint32_t limit, const char* limit_name,
               int32_t* tok, int32_t* tgt) {
  const int bad = FirstAtOrAbove(src, p.len + 1, limit);
  if (bad <= p.len) p.shard->BadTokenId(p.record, p.start + bad, src[bad], limit, limit_name);
  for (int j = 0; j < p.len; ++j) {
    tok[j] = static_cast<int32_t>(src[j]);
    tgt[j] = static_cast<int32_t>(src[j + 1]);
  }
}

}  // namespace

void Fill(const std::vector<Piece>& plan, int batch, int seq, int32_t* out,
          uint32_t vocab_size) {
  const size_t plane = static_cast<size_t>(batch) * seq;
  int32_t* tok = out;
  int32_t* tgt = out + plane;
  int32_t* seg = out + 2 * plane;
  int32_t* pos = out + 3 * plane;
  std::fill(out, out + 4 * plane, 0);
  for (const Piece& p : plan) {
    const TokenView& v = p.shard->tokens(p.record);
    const size_t at = static_cast<size_t>(p.row) * seq + p.col;
    // Ids of 2^31 and above would turn negative in int32: the limit never exceeds that.
    uint32_t limit = 0x80000000u;
    const char* limit_name = "the int32 batch's limit";
    if (p.shard->vocab_size() != 0 && p.shard->vocab_size() < limit) {
      limit = p.shard->vocab_size();
      limit_name = "the shard's vocab_size";
    }
    if (vocab_size != 0 && vocab_size < limit) {
      limit = vocab_size;
      limit_name = "the model's vocab_size";
    }
    if (v.width == 2)
      CopyPiece(p, static_cast<const uint16_t*>(v.data) + p.start, limit, limit_name, tok + at,
                tgt + at);
    else
      CopyPiece(p, static_cast<const uint32_t*>(v.data) + p.start, limit, limit_name, tok + at,
                tgt + at);
    std::fill(seg + at, seg + at + p.len, p.segment);
    for (int j = 0; j < p.len; ++j) pos[at + j] = j;
  }
}

BufferPool::~BufferPool() {
  for (int32_t* p : free_) delete[] p;
}

std::shared_ptr<int32_t[]> BufferPool::Get() {
  int32_t* p = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!free_.empty()) {
      p = free_.back();
      free_.pop_back();
    }
  }
  if (p == nullptr) p = new int32_t[elems_];
  // The deleter keeps the pool alive while NumPy still holds the buffer.
  std::shared_ptr<BufferPool> self = shared_from_this();
  return std::shared_ptr<int32_t[]>(p, [self](int32_t* q) { self->Put(q); });
}

void BufferPool::Put(int32_t* p) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (free_.size() < keep_) {
      free_.push_back(p);
      return;
    }
  }
  delete[] p;
}

Loader::Loader(std::vector<Source> sources, std::vector<Stage> stages, const Options& opt)
    : opt_(opt), planner_(std::move(sources), std::move(stages), opt) {
  if (opt_.prefetch < 0 || opt_.threads < 0)
    throw std::invalid_argument("loader: prefetch and threads must be >= 0");
  if (opt_.prefetch > 0 && opt_.threads == 0) opt_.threads = 1;
  pool_ = std::make_shared<BufferPool>(4ull * opt_.batch * opt_.seq,
                                       static_cast<size_t>(opt_.prefetch + opt_.threads + 4));
  last_state_ = planner_.state();
  Start();
}

Loader::~Loader() { Stop(); }

void Loader::Start() {
  stop_ = false;
  if (opt_.prefetch == 0) return;
  for (int i = 0; i < opt_.threads; ++i) workers_.emplace_back([this] { Work(); });
}

void Loader::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_produce_.notify_all();
  for (auto& t : workers_) t.join();
  workers_.clear();
}

void Loader::Close() { Stop(); }

void Loader::Work() {
  for (;;) {
    std::vector<Piece> plan;
    Batch b;
    uint64_t k;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_produce_.wait(lock, [&] {
        return stop_ || next_plan_ < next_take_ + static_cast<uint64_t>(opt_.prefetch);
      });
      if (stop_) return;
      k = next_plan_++;
      try {
        plan = planner_.Plan();
      } catch (...) {
        b.error = std::current_exception();
      }
      b.state_after = planner_.state();
    }
    if (!b.error) {
      try {
        b.data = pool_->Get();
        Fill(plan, opt_.batch, opt_.seq, b.data.get(), opt_.vocab_size);
      } catch (...) {
        b.error = std::current_exception();
      }
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      ready_.emplace(k, std::move(b));
    }
    cv_consume_.notify_all();
  }
}

Batch Loader::Next() {
  if (opt_.prefetch == 0) {
    std::lock_guard<std::mutex> lock(mu_);
    Batch b;
    std::vector<Piece> plan = planner_.Plan();
    b.data = pool_->Get();
    Fill(plan, opt_.batch, opt_.seq, b.data.get(), opt_.vocab_size);
    b.state_after = last_state_ = planner_.state();
    return b;
  }
  Batch b;
  {
    std::unique_lock<std::mutex> lock(mu_);
    if (stop_) throw std::runtime_error("loader: closed");
    cv_consume_.wait(lock, [&] { return ready_.count(next_take_) > 0; });
    auto it = ready_.find(next_take_);
    // A failed batch stays queued: every later Next() raises the same error.
    if (it->second.error) std::rethrow_exception(it->second.error);
    b = std::move(it->second);
    ready_.erase(it);
    next_take_++;
    last_state_ = b.state_after;
  }
  cv_produce_.notify_all();
  return b;
}

State Loader::state() {
  std::lock_guard<std::mutex> lock(mu_);
  return last_state_;
}

void Loader::Restore(const State& s) {
  Stop();
  std::lock_guard<std::mutex> lock(mu_);
  planner_.set_state(s);
  ready_.clear();
  next_plan_ = next_take_ = 0;
  last_state_ = s;
  stop_ = false;
  if (opt_.prefetch > 0)
    for (int i = 0; i < opt_.threads; ++i) workers_.emplace_back([this] { Work(); });
}

}  // namespace gemini::loader
