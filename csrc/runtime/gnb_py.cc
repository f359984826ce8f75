// pybind11 module `csrc.runtime._gnb`: the runtime's .gnb reader for Python, so that
// gemini.export.gnb.decode validates with the very function nano_run uses (no second parser).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>

#include "csrc/common/mapped_file.h"
#include "csrc/runtime/gnb.h"

namespace py = pybind11;
using namespace gemini::runtime;

namespace {

py::dict ConfigDict(const ModelConfig& c) {
  py::dict d;
  d["name"] = c.name;
  d["vocab_size"] = c.vocab_size;
  d["d_model"] = c.d_model;
  d["n_layers"] = c.n_layers;
  d["n_heads"] = c.n_heads;
  d["n_kv_heads"] = c.n_kv_heads;
  d["head_dim"] = c.head_dim;
  d["d_ff"] = c.d_ff;
  d["max_seq_len"] = c.max_seq_len;
  d["group_size"] = c.group_size;
  d["bos_id"] = c.bos_id;
  d["eos_id"] = c.eos_id;
  d["rope_base"] = c.rope_base;
  d["norm_eps"] = c.norm_eps;
  d["logit_softcap"] = c.logit_softcap;
  d["tie_embeddings"] = c.tie_embeddings;
  d["add_bos"] = c.add_bos;
  d["qk_norm"] = c.qk_norm;
  d["activation"] = c.activation;
  d["chat_template"] = c.chat_template;
  return d;
}

}  // namespace

PYBIND11_MODULE(_gnb, m) {
  m.doc() = "The .gnb reader of csrc/runtime/gnb.h (format: py/gemini/export/FORMAT.md).";
  py::register_local_exception<FormatError>(m, "FormatError", PyExc_ValueError);

  m.def(
      "parse",
      [](py::bytes data, const std::string& name, bool check_data) {
        std::string s = data;
        std::unique_ptr<GnbFile> f;
        {
          py::gil_scoped_release release;
          f = GnbFile::FromBytes(s, name, check_data);
        }
        py::list tensors;
        for (const TensorView& t : f->tensors()) {
          py::tuple shape(t.shape.size());
          for (size_t i = 0; i < t.shape.size(); ++i) shape[i] = t.shape[i];
          tensors.append(py::make_tuple(t.name, static_cast<int>(t.dtype), shape, t.group_size,
                                        t.data - f->data(), t.nbytes));
        }
        py::dict out;
        out["config"] = ConfigDict(f->config());
        out["tokenizer_kind"] = static_cast<int>(f->tokenizer_kind());
        out["tensors"] = tensors;
        return out;
      },
      py::arg("data"), py::arg("name") = "<bytes>", py::arg("check_data") = true,
      "Validates a whole .gnb image (everything nano_run checks) and returns {'config': the "
      "parsed config, 'tokenizer_kind', 'tensors': [(name, dtype, shape, group_size, offset, "
      "nbytes)]}; raises FormatError (a ValueError) naming the file, field and value.");

  m.def(
      "read_file",
      [](const std::string& path) {
        gemini::MappedFile f;
        {
          py::gil_scoped_release release;
          try {
            f = gemini::MappedFile::Open(path);
          } catch (const gemini::MappedFileError& e) {
            throw FormatError(e.what());
          }
        }
        return py::bytes(reinterpret_cast<const char*>(f.data()), f.size());
      },
      py::arg("path"),
      "The bytes of a regular file (FIFOs, devices, directories refused without blocking), "
      "through the same mapping the C++ reader uses.");
}
