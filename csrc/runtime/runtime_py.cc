// pybind11 module `csrc.runtime._runtime`: the C++ runtime for Python tests.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>

#include "csrc/runtime/generate.h"
#include "csrc/runtime/gnb.h"
#include "csrc/runtime/kernels.h"
#include "csrc/runtime/model.h"
#include "csrc/runtime/sampler.h"
#include "csrc/runtime/tokenizer.h"

namespace py = pybind11;
using namespace gemini::runtime;

namespace {

struct Runner {
  std::shared_ptr<GnbFile> file;
  std::unique_ptr<Model> model;
  std::unique_ptr<ThreadPool> pool;
  std::unique_ptr<Tokenizer> tok;
};

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

  py::class_<Runner>(m, "Runtime")
      .def(py::init([](const std::string& path, int threads, const std::string& kernel) {
             auto r = std::make_unique<Runner>();
             r->file = GnbFile::Open(path);
             r->model = Model::FromFile(r->file, SelectKernels(kernel));
             r->pool = std::make_unique<ThreadPool>(threads);
             if (r->file->tokenizer_kind() != kTokNone)
               r->tok = Tokenizer::Create(r->file->tokenizer_kind(), r->file->tokenizer_bytes(), path);
             return r;
           }), py::arg("path"), py::arg("threads") = 1, py::arg("kernel") = "auto")
      .def_property_readonly("config", [](const Runner& r) { return ConfigDict(r.model->config()); })
      .def_property_readonly("kernel", [](const Runner& r) { return std::string(r.model->kernels().name); })
      .def("logits", [](Runner& r, const std::vector<int>& tokens) {
             int V = r.model->config().vocab_size;
             std::vector<float> all;
             {
               py::gil_scoped_release release;
               Session s(*r.model, static_cast<int>(tokens.size()), r.pool.get());
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
             Session s(*r.model, static_cast<int>(prompt.size()) + max_tokens, r.pool.get());
             return Generate(&s, prompt, max_tokens, &sampler, stop_at_eos ? r.model->config().eos_id : -1, nullptr);
           }, py::arg("prompt"), py::arg("max_tokens"), py::arg("temperature") = 0.f, py::arg("top_k") = 0,
           py::arg("top_p") = 1.f, py::arg("seed") = 0, py::arg("stop_at_eos") = false)
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
