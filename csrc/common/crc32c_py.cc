// pybind11 face of csrc/common/crc32c: `from csrc.common import _crc32c`.
#include <pybind11/pybind11.h>

#include "csrc/common/crc32c.h"

namespace py = pybind11;

namespace {

uint32_t Checksum(const py::buffer& data, uint32_t crc, bool portable) {
  py::buffer_info info = data.request();
  // Only C-contiguous buffers: a strided view's bytes are not one run of memory.
  py::ssize_t expected = info.itemsize;
  for (py::ssize_t d = info.ndim - 1; d >= 0; --d) {
    if (info.shape[d] > 1 && info.strides[d] != expected)
      throw py::value_error("crc32c: buffer is not C-contiguous; pass a contiguous copy");
    expected *= info.shape[d];
  }
  const size_t n = static_cast<size_t>(info.size) * static_cast<size_t>(info.itemsize);
  const void* ptr = info.ptr;
  py::gil_scoped_release release;  // Large buffers: let other threads run.
  return portable ? gemini::Crc32cPortable(ptr, n, crc) : gemini::Crc32c(ptr, n, crc);
}

}  // namespace

PYBIND11_MODULE(_crc32c, m) {
  m.doc() = "CRC-32C (Castagnoli) over any contiguous buffer.";
  m.def("crc32c", [](const py::buffer& d, uint32_t crc) { return Checksum(d, crc, false); },
        py::arg("data"), py::arg("crc") = 0,
        "CRC-32C of the buffer's bytes; pass a previous value as crc to extend it.");
  m.def("crc32c_portable",
        [](const py::buffer& d, uint32_t crc) { return Checksum(d, crc, true); },
        py::arg("data"), py::arg("crc") = 0, "Table-driven CRC-32C (reference path).");
  m.def("hardware", &gemini::Crc32cHardware, "True if the SSE4.2 instruction is used.");
}
