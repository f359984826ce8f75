// pybind11 module `csrc.runtime._runtime`: the C++ runtime for Python tests.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "csrc/runtime/generate.h"
#include "csrc/runtime/gguf_model.h"
#include "csrc/runtime/gguf_reader.h"
#include "csrc/runtime/gnb.h"
#include "csrc/runtime/kernels.h"
#include "csrc/runtime/model.h"
#include "csrc/runtime/sampler.h"
#include "csrc/runtime/tokenizer.h"

namespace py = pybind11;
using namespace gemini::runtime;

namespace {

struct Runner {
  SessionOptions options;
  std::shared_ptr<GnbFile> file;
  std::unique_ptr<Model> model;
  std::unique_ptr<ThreadPool> pool;
  std::unique_ptr<Tokenizer> tok;
  std::unique_ptr<Decoder> decoder;  // prefill / decode_batch
  std::vector<float> logits;         // decode_batch(out=...)'s scratch (grows only; under mu)
  // Held by every call that runs on `pool` (logits, generate, prefill, decode_batch, ...): the
  // pool runs one job at a time, and a server's scheduler thread and another Python thread
  // (a test's one-at-a-time reference) may call in together once the GIL is released.
  std::mutex mu;
};

// One sequence of the batched decode API: its KV cache, tied to the Runtime that made it.
struct State {
  std::shared_ptr<Runner> runner;
  std::unique_ptr<KvCache> cache;
};

KvCache* CacheOf(const Runner& r, const State* s, size_t i) {
  if (s == nullptr) throw std::invalid_argument("state " + std::to_string(i) + " is None");
  if (s->runner.get() != &r)
    throw std::invalid_argument("state " + std::to_string(i) + " was made by another Runtime");
  return s->cache.get();
}

std::vector<KvCache*> CachesOf(const Runner& r, const std::vector<State*>& states) {
  std::vector<KvCache*> caches(states.size());
  for (size_t i = 0; i < states.size(); ++i) caches[i] = CacheOf(r, states[i], i);
  return caches;
}

// Runs `step(logits [b, V])` with the GIL released and the runtime locked; returns a new
// [b, V] array, or copies row i into out[rows[i]] of a caller's array (a server's per-slot
// logits: no allocation) and returns out.
template <typename Step>
py::object RunInto(Runner& r, int b, py::object out_obj, py::object rows_obj, const char* what, Step step) {
  const std::string w = what;
  const int V = r.model->config().vocab_size;
  if (out_obj.is_none() != rows_obj.is_none())
    throw std::invalid_argument(w + ": give both out and rows, or neither");
  if (out_obj.is_none()) {
    py::array_t<float> out({static_cast<py::ssize_t>(b), static_cast<py::ssize_t>(V)});
    float* o = out.mutable_data();
    {
      py::gil_scoped_release release;
      std::lock_guard<std::mutex> lock(r.mu);
      step(o);
    }
    return py::object(out);
  }
  auto out = py::cast<py::array>(out_obj);
  if (out.dtype().kind() != 'f' || out.itemsize() != 4 || out.ndim() != 2 || out.shape(1) != V ||
      !(out.flags() & py::array::c_style) || !out.writeable())
    throw std::invalid_argument(w + ": out must be a writable C-contiguous float32 [n, " + std::to_string(V) +
                                "] array");
  const std::vector<int> rows = py::cast<std::vector<int>>(rows_obj);
  if (rows.size() != static_cast<size_t>(b))
    throw std::invalid_argument(w + ": " + std::to_string(rows.size()) + " rows for " + std::to_string(b) +
                                " states");
  for (int row : rows)
    if (row < 0 || row >= out.shape(0))
      throw std::out_of_range(w + ": row " + std::to_string(row) + " outside out's " +
                              std::to_string(out.shape(0)) + " rows");
  float* o = static_cast<float*>(out.mutable_data());
  {
    py::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(r.mu);
    const size_t n = static_cast<size_t>(b) * V;
    if (r.logits.size() < n) r.logits.resize(n);
    step(r.logits.data());
    for (int i = 0; i < b; ++i)
      std::memcpy(o + static_cast<size_t>(rows[i]) * V, r.logits.data() + static_cast<size_t>(i) * V,
                  V * sizeof(float));
  }
  return py::object(out);
}

py::dict ConfigDict(const ModelConfig& c) {
  py::dict d;
  d["name"] = c.name; d["vocab_size"] = c.vocab_size; d["d_model"] = c.d_model;
  d["n_layers"] = c.n_layers; d["n_heads"] = c.n_heads; d["n_kv_heads"] = c.n_kv_heads;
  d["head_dim"] = c.head_dim; d["d_ff"] = c.d_ff; d["max_seq_len"] = c.max_seq_len;
  d["group_size"] = c.group_size; d["bos_id"] = c.bos_id; d["eos_id"] = c.eos_id;
  d["rope_base"] = c.rope_base; d["norm_eps"] = c.norm_eps; d["logit_softcap"] = c.logit_softcap;
  d["tie_embeddings"] = c.tie_embeddings; d["add_bos"] = c.add_bos;
  d["qk_norm"] = c.qk_norm;
  d["activation"] = c.activation; d["chat_template"] = c.chat_template;
  return d;
}

}  // namespace

PYBIND11_MODULE(_runtime, m) {
  m.doc() = "The int4 Nano CPU runtime (csrc/runtime) for tests.";
  py::register_exception<FormatError>(m, "FormatError", PyExc_ValueError);

  m.def("parse_bytes", [](py::bytes data, const std::string& name) {
    std::string s = data;
    std::unique_ptr<GnbFile> f;
    {
      py::gil_scoped_release release;
      f = GnbFile::FromBytes(s, name);
    }
    py::list names;
    for (const auto& t : f->tensors()) names.append(t.name);
    return py::make_tuple(ConfigDict(f->config()), names);
  }, py::arg("data"), py::arg("name") = "<bytes>",
  "Parses and validates a whole .gnb image; returns (config dict, tensor names) or raises FormatError.");

  m.def("cpu_has_avx2", &CpuHasAvx2Fma);
  m.def("parse_gguf", [](py::bytes data, const std::string& name) {
    std::string s = data;
    std::unique_ptr<GgufFile> f;
    {
      py::gil_scoped_release release;
      f = GgufFile::FromBytes(s, name);
    }
    py::list names;
    for (const auto& t : f->tensors()) names.append(t.name);
    return py::make_tuple(ConfigDict(GgufConfig(*f)), names);
  }, py::arg("data"), py::arg("name") = "<bytes>",
  "Parses a whole GGUF image and its llama config; returns (config dict, tensor names) or raises FormatError.");
  m.def("available_kernels", &AvailableKernels, "Kernel names this build and CPU run, 'scalar' first.");
  m.def("cpu_description", &CpuDescription);
  m.def("cpu_supports", &CpuSupports);

  m.def("quant_matmul", [](py::bytes packed, py::bytes scales, py::object mins, const std::string& fmt,
                           int n, int k, int group, bool bf16,
                           py::array_t<float, py::array::c_style | py::array::forcecast> x,
                           const std::string& kernel, bool int8_acts) {
    std::string p = packed, s = scales, mn = mins.is_none() ? std::string() : std::string(py::bytes(mins));
    QMatrix w;
    w.format = fmt == "q4" ? WFormat::kQ4 : fmt == "q4min" ? WFormat::kQ4Min : fmt == "q8" ? WFormat::kQ8
             : throw std::invalid_argument("format must be q4|q4min|q8");
    w.n = n; w.k = k; w.group = group; w.kp = (k + group - 1) / group * group; w.bf16_scales = bf16;
    if (p.size() != static_cast<size_t>(n) * w.RowBytes() || s.size() != 2ULL * n * (w.kp / group) ||
        (w.format == WFormat::kQ4Min && mn.size() != 2ULL * n * (w.kp / 32)))
      throw std::invalid_argument("quant_matmul: buffer sizes do not match n, k, group, format");
    w.packed = reinterpret_cast<const uint8_t*>(p.data());
    w.scales = reinterpret_cast<const uint16_t*>(s.data());
    w.mins = reinterpret_cast<const uint16_t*>(mn.data());
    if (x.ndim() != 2 || x.shape(1) != k) throw std::invalid_argument("quant_matmul: x must be [T, k]");
    int t = static_cast<int>(x.shape(0));
    std::vector<float> xp(static_cast<size_t>(t) * w.kp, 0.f);
    for (int i = 0; i < t; ++i) std::copy(x.data(i, 0), x.data(i, 0) + k, xp.begin() + static_cast<size_t>(i) * w.kp);
    py::array_t<float> y({t, n});
    const Kernels& kern = SelectKernels(kernel);
    PackedTiles tiles;
    if (kern.pack != nullptr) kern.pack(&w, &tiles);  // as Model does for these kernels
    if (int8_acts) {
      QActs qa;
      QuantizeActs(xp.data(), t, w.kp, w.kp, &qa);
      kern.qmatmul(w, qa, y.mutable_data(), n, 0, n);
    } else if (t == 1) {
      kern.matvec(w, xp.data(), y.mutable_data(), 0, n);
    } else {
      kern.matmul(w, xp.data(), t, w.kp, y.mutable_data(), n, 0, n);
    }
    return y;
  }, py::arg("packed"), py::arg("scales"), py::arg("mins"), py::arg("format"), py::arg("n"), py::arg("k"),
     py::arg("group"), py::arg("bf16"), py::arg("x"), py::arg("kernel"), py::arg("int8_acts"),
  "y[T, n] = x[T, k] @ W^T for a quantised matrix given as its packed/scales/mins buffers.");

  m.def("quantize_acts", [](py::array_t<float, py::array::c_style | py::array::forcecast> x,
                            const std::string& kernel) {
    if (x.ndim() != 2 || x.shape(1) % 32 != 0) throw std::invalid_argument("x must be [T, 32k]");
    int t = static_cast<int>(x.shape(0)), kp = static_cast<int>(x.shape(1));
    QActs qa;
    QuantizeActs(x.data(), t, kp, kp, &qa, SelectKernels(kernel).quantize_row);
    py::array_t<int8_t> q({t, kp});
    py::array_t<float> d({t, kp / 32});
    std::copy(qa.q.begin(), qa.q.begin() + static_cast<size_t>(t) * kp, q.mutable_data());
    std::copy(qa.d.begin(), qa.d.begin() + static_cast<size_t>(t) * (kp / 32), d.mutable_data());
    return py::make_tuple(q, d);
  }, py::arg("x"), py::arg("kernel") = "scalar",
  "int8 per-32-block activation quantisation: (q int8 [T, K], d f32 [T, K/32]).");
  m.def("gated_act", [](py::array_t<float, py::array::c_style | py::array::forcecast> g,
                        py::array_t<float, py::array::c_style | py::array::forcecast> u, bool gelu,
                        const std::string& kernel) {
    if (g.ndim() != 1 || u.ndim() != 1 || g.size() != u.size())
      throw std::invalid_argument("gated_act: g and u must be 1-D of one length");
    py::array_t<float> out(g.size());
    std::copy(g.data(), g.data() + g.size(), out.mutable_data());
    SelectKernels(kernel).gated_act(out.mutable_data(), u.data(), static_cast<int>(g.size()), gelu);
    return out;
  }, "act(g) * u (act: gelu-tanh if gelu else silu), f32 [n].");
  m.def("attend_f16", [](py::array_t<float, py::array::c_style | py::array::forcecast> q,
                         py::array_t<uint16_t, py::array::c_style | py::array::forcecast> k,
                         py::array_t<uint16_t, py::array::c_style | py::array::forcecast> v,
                         float scale, const std::string& kernel) {
    if (q.ndim() != 2 || k.ndim() != 2 || v.ndim() != 2 || k.shape(1) != q.shape(1) ||
        v.shape(0) != k.shape(0) || v.shape(1) != k.shape(1) || k.shape(0) < 1)
      throw std::invalid_argument("attend_f16: q [nh, dh], k and v [len, dh] f16 bits");
    const int nh = static_cast<int>(q.shape(0)), dh = static_cast<int>(q.shape(1)), len = static_cast<int>(k.shape(0));
    std::vector<float> scores(static_cast<size_t>(nh) * len);
    py::array_t<float> o({nh, dh});
    SelectKernels(kernel).attend_f16(q.data(), nh, dh, k.data(), v.data(), dh, len, scale, scores.data(),
                                     o.mutable_data());
    return o;
  }, "softmax(scale q k^T) v for one kv head: q f32 [nh, dh], k/v f16 bits [len, dh] -> [nh, dh].");
  m.def("f32_to_f16_bits", [](py::array_t<float, py::array::c_style | py::array::forcecast> x) {
    std::vector<uint16_t> out(x.size());
    for (py::ssize_t i = 0; i < x.size(); ++i) out[i] = F32ToF16(x.data()[i]);
    return out;
  });

  m.def("int4_matvec", [](py::bytes tensor_data, int n, int k, int group, bool bf16,
                          py::array_t<float, py::array::c_style | py::array::forcecast> x,
                          const std::string& kernel) {
    std::string d = tensor_data;
    Int4Matrix w;
    w.n = n; w.k = k; w.group = group; w.kp = (k + group - 1) / group * group; w.bf16_scales = bf16;
    if (d.size() != static_cast<size_t>(n) * w.kp / 2 + 2ULL * n * (w.kp / group))
      throw std::invalid_argument("int4_matvec: tensor bytes do not match n, k, group");
    w.packed = reinterpret_cast<const uint8_t*>(d.data());
    w.scales = reinterpret_cast<const uint16_t*>(d.data() + static_cast<size_t>(n) * w.kp / 2);
    if (x.ndim() != 2 || x.shape(1) != k) throw std::invalid_argument("int4_matvec: x must be [T, k]");
    int t = static_cast<int>(x.shape(0));
    std::vector<float> xp(static_cast<size_t>(t) * w.kp, 0.f);
    for (int i = 0; i < t; ++i) std::copy(x.data(i, 0), x.data(i, 0) + k, xp.begin() + static_cast<size_t>(i) * w.kp);
    py::array_t<float> y({t, n});
    const Kernels& kern = SelectKernels(kernel);
    if (t == 1) kern.matvec(w, xp.data(), y.mutable_data(), 0, n);
    else kern.matmul(w, xp.data(), t, w.kp, y.mutable_data(), n, 0, n);
    return y;
  }, "y[T, n] = x[T, k] @ W^T for one .gnb int4 tensor's data bytes (tests of the kernels).");

  py::class_<State>(m, "State",
      "One sequence's KV cache and length (Runtime.new_state); advanced by Runtime.prefill and "
      "Runtime.decode_batch.")
      .def_property_readonly("length", [](const State& s) { return s.cache->length(); },
                             "Tokens in the cache (the next token's position).")
      .def_property_readonly("max_len", [](const State& s) { return s.cache->max_len(); })
      .def_property_readonly("kv_f16", [](const State& s) { return s.cache->f16(); })
      .def("truncate", [](State& s, int n) {
             std::lock_guard<std::mutex> lock(s.runner->mu);
             s.cache->Truncate(n);
           }, py::arg("n"), "Drops the cache past the first n tokens (IndexError unless 0 <= n <= length).")
      .def("copy", [](const State& s) {
             auto c = std::make_unique<State>();
             c->runner = s.runner;
             {
               py::gil_scoped_release release;
               std::lock_guard<std::mutex> lock(s.runner->mu);
               c->cache = s.cache->Clone();
             }
             return c;
           }, "An independent snapshot (a prefix cache entry): later calls on either leave the other unchanged.");

  py::class_<Runner, std::shared_ptr<Runner>>(m, "Runtime")
      .def(py::init([](const std::string& path, int threads, const std::string& kernel,
                       bool int8_activations, bool kv_f16) {
             auto r = std::make_shared<Runner>();
             r->options.int8_activations = int8_activations;
             r->options.kv_f16 = kv_f16;
             LoadedModel loaded = OpenModelFile(path, SelectKernels(kernel));  // .gnb or GGUF
             r->file = loaded.gnb;
             r->model = std::move(loaded.model);
             r->tok = std::move(loaded.tokenizer);
             r->pool = std::make_unique<ThreadPool>(threads);
             r->decoder = std::make_unique<Decoder>(*r->model, r->pool.get(), r->options);
             return r;
           }), py::arg("path"), py::arg("threads") = 1, py::arg("kernel") = "auto",
           // Python callers are parity tests: the f32 paths unless they ask for the fast ones.
           py::arg("int8_activations") = false, py::arg("kv_f16") = false)
      .def_property_readonly("config", [](const Runner& r) { return ConfigDict(r.model->config()); })
      .def_property_readonly("kernel", [](const Runner& r) { return std::string(r.model->kernels().name); })
      .def("logits", [](Runner& r, const std::vector<int>& tokens) {
             int V = r.model->config().vocab_size;
             std::vector<float> all;
             {
               py::gil_scoped_release release;
               std::lock_guard<std::mutex> lock(r.mu);
               Session s(*r.model, static_cast<int>(tokens.size()), r.pool.get(), r.options);
               s.Forward(tokens.data(), static_cast<int>(tokens.size()), nullptr, &all);
             }
             py::array_t<float> out({static_cast<py::ssize_t>(tokens.size()), static_cast<py::ssize_t>(V)});
             std::copy(all.begin(), all.end(), out.mutable_data());
             return out;
           }, "Causal forward of one sequence: logits f32 [T, V].")
      .def("generate", [](Runner& r, const std::vector<int>& prompt, int max_tokens, float temperature,
                          int top_k, float top_p, uint64_t seed, bool stop_at_eos) {
             SamplingParams sp{temperature, top_k, top_p, seed};
             Sampler sampler(sp);
             py::gil_scoped_release release;
             std::lock_guard<std::mutex> lock(r.mu);
             Session s(*r.model, static_cast<int>(prompt.size()) + max_tokens, r.pool.get(), r.options);
             return Generate(&s, prompt, max_tokens, &sampler, stop_at_eos ? r.model->config().eos_id : -1, nullptr);
           }, py::arg("prompt"), py::arg("max_tokens"), py::arg("temperature") = 0.f, py::arg("top_k") = 0,
           py::arg("top_p") = 1.f, py::arg("seed") = 0, py::arg("stop_at_eos") = false)
      .def("new_state", [](const std::shared_ptr<Runner>& r, int max_len, bool kv_f16) {
             auto s = std::make_unique<State>();
             s->runner = r;
             s->cache = std::make_unique<KvCache>(r->model->config(), max_len, kv_f16);
             return s;
           }, py::arg("max_len"), py::arg("kv_f16") = true,
           "An empty sequence state holding up to max_len tokens (f16 KV cache unless kv_f16=False).")
      .def("prefill", [](Runner& r, State& state, const std::vector<int>& tokens) {
             KvCache* cache = CacheOf(r, &state, 0);
             py::array_t<float> out(static_cast<py::ssize_t>(r.model->config().vocab_size));
             float* o = out.mutable_data();
             {
               py::gil_scoped_release release;
               std::lock_guard<std::mutex> lock(r.mu);
               r.decoder->Forward(cache, tokens.data(), static_cast<int>(tokens.size()), o, nullptr);
             }
             return out;
           }, py::arg("state"), py::arg("tokens"),
           "Appends tokens to the state (a prompt, or a further chunk of it); returns the last token's "
           "logits f32 [V].")
      .def("decode_batch", [](Runner& r, const std::vector<State*>& states, const std::vector<int>& tokens,
                              py::object out_obj, py::object rows_obj) {
             if (states.size() != tokens.size())
               throw std::invalid_argument("decode_batch: " + std::to_string(states.size()) + " states but " +
                                           std::to_string(tokens.size()) + " tokens");
             std::vector<KvCache*> caches = CachesOf(r, states);
             return RunInto(r, static_cast<int>(states.size()), out_obj, rows_obj, "decode_batch",
                            [&](float* logits) {
                              r.decoder->DecodeBatch(caches.data(), tokens.data(), static_cast<int>(caches.size()),
                                                     logits);
                            });
           }, py::arg("states"), py::arg("tokens"), py::arg("out") = py::none(), py::arg("rows") = py::none(),
           "Advances each state by its token in one batched step (every weight matrix read once for the "
           "batch); returns logits f32 [B, V], or writes state i's to out[rows[i]] and returns out.")
      .def("prefill_batch", [](Runner& r, const std::vector<State*>& states,
                               const std::vector<std::vector<int>>& token_lists, py::object out_obj,
                               py::object rows_obj) {
             if (states.size() != token_lists.size())
               throw std::invalid_argument("prefill_batch: " + std::to_string(states.size()) + " states but " +
                                           std::to_string(token_lists.size()) + " token lists");
             std::vector<KvCache*> caches = CachesOf(r, states);
             std::vector<int> flat, counts;
             for (const auto& l : token_lists) {
               counts.push_back(static_cast<int>(l.size()));
               flat.insert(flat.end(), l.begin(), l.end());
             }
             return RunInto(r, static_cast<int>(states.size()), out_obj, rows_obj, "prefill_batch",
                            [&](float* logits) {
                              r.decoder->ForwardBatch(caches.data(), flat.data(), counts.data(),
                                                      static_cast<int>(caches.size()), logits);
                            });
           }, py::arg("states"), py::arg("token_lists"), py::arg("out") = py::none(), py::arg("rows") = py::none(),
           "Appends token_lists[i] (>= 1 tokens each: a prompt chunk, or one decode token) to states[i] for "
           "every i in one forward (every weight matrix read once for all their tokens); returns each "
           "sequence's last-token logits f32 [n, V], or writes state i's to out[rows[i]] and returns out.")
      .def("encode", [](Runner& r, const std::string& text) {
             if (!r.tok) throw std::invalid_argument("the file has no tokenizer");
             return r.tok->Encode(text);
           })
      .def("decode", [](Runner& r, const std::vector<int>& ids) {
             if (!r.tok) throw std::invalid_argument("the file has no tokenizer");
             return py::bytes(r.tok->Decode(ids));
           });

  m.def("sample_probabilities", [](py::array_t<float, py::array::c_style | py::array::forcecast> logits,
                                   float temperature, int top_k, float top_p) {
    Sampler s(SamplingParams{temperature, top_k, top_p, 0});
    return s.Probabilities(logits.data(), static_cast<int>(logits.size()));
  });
  m.def("sample", [](py::array_t<float, py::array::c_style | py::array::forcecast> logits, float temperature,
                     int top_k, float top_p, uint64_t seed, int n) {
    Sampler s(SamplingParams{temperature, top_k, top_p, seed});
    std::vector<int> out;
    for (int i = 0; i < n; ++i) out.push_back(s.Sample(logits.data(), static_cast<int>(logits.size())));
    return out;
  });
}
