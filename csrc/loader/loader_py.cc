// pybind11 face of the loader: `from csrc.loader import _loader`. The Python API users see is
// py/gemini/data/loader.py; this module is its engine. Reads and packing release the GIL;
// arrays handed to NumPy are views (mmap'd records, loader-owned batch buffers), not copies.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <vector>

#include "csrc/loader/encode.h"
#include "csrc/loader/loader.h"
#include "csrc/loader/shard.h"

namespace py = pybind11;
using gemini::loader::Batch;
using gemini::loader::Loader;
using gemini::loader::MediaView;
using gemini::loader::Options;
using gemini::loader::Shard;
using gemini::loader::ShardError;
using gemini::loader::State;

namespace {

uint64_t Index(const Shard& s, int64_t i) {
  if (i < 0 || static_cast<uint64_t>(i) >= s.num_records())
    throw ShardError("shard '" + s.path() + "': record " + std::to_string(i) +
                     " at byte offset 64: index out of range (shard has " +
                     std::to_string(s.num_records()) + " records)");
  return static_cast<uint64_t>(i);
}

// A read-only NumPy view of mmap'd bytes that keeps the shard alive.
py::array View(const std::shared_ptr<Shard>& shard, py::dtype dt, std::vector<py::ssize_t> shape,
               const void* data) {
  py::array a(dt, shape, {}, data, py::cast(shard));
  py::detail::array_proxy(a.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
  return a;
}

py::array Tokens(const std::shared_ptr<Shard>& s, int64_t i) {
  const auto& t = s->tokens(Index(*s, i));
  return View(s, t.width == 2 ? py::dtype::of<uint16_t>() : py::dtype::of<uint32_t>(),
              {static_cast<py::ssize_t>(t.count)}, t.data);
}

py::list Media(const std::shared_ptr<Shard>& s, int64_t i) {
  static const char* kNames[4] = {"", "image", "audio", "video"};
  py::list out;
  for (const MediaView& m : s->media(Index(*s, i))) {
    py::dtype dt = m.dtype == 1 ? py::dtype::of<uint8_t>()
                   : m.dtype == 2 ? py::dtype::of<int16_t>()
                   : m.dtype == 3 ? py::dtype::of<float>()
                                  : py::dtype::of<uint8_t>();
    std::vector<py::ssize_t> shape(m.shape, m.shape + m.ndim);
    py::dict d;
    d["modality"] = kNames[m.modality];
    d["encoded"] = m.dtype == 4;
    d["placement"] = m.placement;
    d["num_placeholders"] = m.num_placeholders;
    d["array"] = View(s, dt, shape, m.data);
    out.append(d);
  }
  return out;
}

py::dict StateToDict(const State& s) {
  py::dict d;
  d["batch_index"] = s.batch_index;
  d["draws"] = s.draws;
  d["cur_source"] = s.cur_source;
  d["cur_record"] = s.cur_record;
  d["cur_offset"] = s.cur_offset;
  d["epochs"] = s.epochs;
  d["cursors"] = s.cursors;
  return d;
}

State StateFromDict(const py::dict& d) {
  State s;
  try {
    s.batch_index = d["batch_index"].cast<int64_t>();
    s.draws = d["draws"].cast<uint64_t>();
    s.cur_source = d["cur_source"].cast<int64_t>();
    s.cur_record = d["cur_record"].cast<uint64_t>();
    s.cur_offset = d["cur_offset"].cast<uint64_t>();
    s.epochs = d["epochs"].cast<std::vector<uint64_t>>();
    s.cursors = d["cursors"].cast<std::vector<uint64_t>>();
  } catch (const py::error_already_set& e) {
    throw py::value_error(std::string("loader state: missing or bad field: ") + e.what());
  } catch (const py::cast_error& e) {
    throw py::value_error(std::string("loader state: bad field type: ") + e.what());
  }
  return s;
}

py::tuple BatchToNumpy(Batch b, int batch, int seq) {
  auto* keep = new std::shared_ptr<int32_t[]>(std::move(b.data));
  py::capsule owner(keep, [](void* p) { delete static_cast<std::shared_ptr<int32_t[]>*>(p); });
  const size_t plane = static_cast<size_t>(batch) * seq;
  py::tuple out(4);
  for (int k = 0; k < 4; ++k)
    out[k] = py::array_t<int32_t>({batch, seq}, keep->get() + k * plane, owner);
  return out;
}

gemini::loader::DocIn DocFromPy(const py::handle& r) {
  gemini::loader::DocIn d;
  if (py::isinstance<py::dict>(r)) {
    py::dict rd = py::reinterpret_borrow<py::dict>(r);
    d.multimodal = true;
    d.tokens = rd["tokens"].cast<std::vector<uint32_t>>();
    for (auto m : rd["media"].cast<py::list>()) {
      py::dict md = py::reinterpret_borrow<py::dict>(m);
      d.media.push_back({md["modality"].cast<uint32_t>(), md["dtype"].cast<uint32_t>(),
                         md["placement"].cast<uint32_t>(), md["num_placeholders"].cast<uint32_t>(),
                         md["shape"].cast<std::vector<uint32_t>>(), md["bytes"].cast<std::string>()});
    }
  } else {
    d.tokens = r.cast<std::vector<uint32_t>>();
  }
  return d;
}

}  // namespace

PYBIND11_MODULE(_loader, m) {
  m.doc() = "Gemini data shards (.gshd) reader and packing loader; see csrc/loader/FORMAT.md.";
  py::register_exception<ShardError>(m, "ShardError", PyExc_ValueError);

  py::class_<Shard, std::shared_ptr<Shard>>(m, "Shard")
      .def(py::init([](const std::string& path, bool verify) {
             py::gil_scoped_release release;
             return Shard::Open(path, verify);
           }),
           py::arg("path"), py::arg("verify") = true)
      .def_static(
          "from_bytes",
          [](const py::bytes& b, const std::string& name, bool verify) {
            std::string s = b;
            py::gil_scoped_release release;
            return Shard::FromBytes(s, name, verify);
          },
          py::arg("data"), py::arg("name") = "<bytes>", py::arg("verify") = true)
      .def("__len__", &Shard::num_records)
      .def_property_readonly("path", &Shard::path)
      .def_property_readonly("vocab_size", &Shard::vocab_size)
      .def_property_readonly("file_size", &Shard::file_size)
      .def("kind", [](const Shard& s, int64_t i) { return s.kind(Index(s, i)); })
      .def("offset", [](const Shard& s, int64_t i) { return s.offset(Index(s, i)); })
      .def("length", [](const Shard& s, int64_t i) { return s.length(Index(s, i)); })
      .def("tokens", &Tokens, "Zero-copy uint16/uint32 view of record i's token ids.")
      .def("media", &Media, "Record i's media items (zero-copy arrays).")
      .def("verify_record", [](const Shard& s, int64_t i) {
        const uint64_t k = Index(s, i);
        py::gil_scoped_release release;
        s.VerifyRecord(k);
      });

  py::class_<Loader>(m, "Loader")
      .def(py::init([](const std::vector<std::pair<std::string, std::vector<std::shared_ptr<Shard>>>>&
                           sources,
                       const std::vector<std::pair<int64_t, std::vector<double>>>& stages,
                       int batch, int seq, uint64_t seed, int process_index, int process_count,
                       int prefetch, int threads, uint32_t vocab_size) {
             std::vector<gemini::loader::Source> src;
             for (const auto& [name, shards] : sources) src.push_back({name, shards});
             std::vector<gemini::loader::Stage> st;
             for (const auto& [until, w] : stages) st.push_back({until, w});
             Options o;
             o.batch = batch;
             o.seq = seq;
             o.seed = seed;
             o.process_index = process_index;
             o.process_count = process_count;
             o.prefetch = prefetch;
             o.threads = threads;
             o.vocab_size = vocab_size;
             try {
               return std::make_unique<Loader>(std::move(src), std::move(st), o);
             } catch (const std::invalid_argument& e) {
               throw py::value_error(e.what());
             }
           }),
           py::arg("sources"), py::arg("stages"), py::arg("batch"), py::arg("seq"),
           py::arg("seed") = 0, py::arg("process_index") = 0, py::arg("process_count") = 1,
           py::arg("prefetch") = 2, py::arg("threads") = 1, py::arg("vocab_size") = 0)
      .def("next",
           [](Loader& l) {
             Batch b;
             {
               py::gil_scoped_release release;
               b = l.Next();
             }
             return BatchToNumpy(std::move(b), l.options().batch, l.options().seq);
           },
           "Next batch as (tokens, targets, segment_ids, positions), int32 [B, S] each.")
      .def("state", [](Loader& l) { return StateToDict(l.state()); })
      .def("restore",
           [](Loader& l, const py::dict& d) {
             State s = StateFromDict(d);
             py::gil_scoped_release release;
             try {
               l.Restore(s);
             } catch (const std::invalid_argument& e) {
               throw py::value_error(e.what());
             }
           })
      .def("close", [](Loader& l) {
        py::gil_scoped_release release;
        l.Close();
      });

  m.def(
      "encode_shard",
      [](const py::list& records, uint32_t vocab_size) {
        std::vector<gemini::loader::DocIn> docs;
        for (auto r : records) docs.push_back(DocFromPy(r));
        std::string out;
        {
          py::gil_scoped_release release;
          try {
            out = gemini::loader::EncodeShard(docs, vocab_size);
          } catch (const std::invalid_argument& e) {
            throw ShardError(e.what());
          }
        }
        return py::bytes(out);
      },
      py::arg("records"), py::arg("vocab_size") = 0,
      "C++ encoder: records are int sequences or {'tokens', 'media': [{'modality', 'dtype', "
      "'placement', 'num_placeholders', 'shape', 'bytes'}]} dicts (codes as in FORMAT.md).");
  m.def("mix64", &gemini::loader::Mix64, "The splitmix64 finaliser behind every random choice.");
}
