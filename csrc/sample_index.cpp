// Packing documents into fixed-length samples: see lqs_megatron/data/sample_index.py
// for the definition (this is its native twin; tests compare the two).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace py = pybind11;

py::array_t<int64_t> build_sample_index(py::array_t<int64_t, py::array::c_style | py::array::forcecast> doc_lengths,
                                        int64_t seq_length, int64_t num_samples) {
  if (seq_length < 1) throw std::invalid_argument("seq_length must be >= 1");
  if (num_samples < 0) throw std::invalid_argument("num_samples must be >= 0");
  auto lengths = doc_lengths.unchecked<1>();
  const int64_t n_docs = lengths.shape(0);
  int64_t total = 0;
  for (int64_t i = 0; i < n_docs; ++i) total += lengths(i);
  if (num_samples > 0 && num_samples * seq_length + 1 > total) {
    throw std::invalid_argument(std::to_string(num_samples) + " samples of " + std::to_string(seq_length) +
                                " tokens need " + std::to_string(num_samples * seq_length + 1) +
                                " tokens, the documents hold " + std::to_string(total));
  }
  py::array_t<int64_t> out({num_samples + 1, static_cast<int64_t>(2)});
  auto o = out.mutable_unchecked<2>();
  {
    py::gil_scoped_release release;
    int64_t i = 0, offset = 0;
    o(0, 0) = 0;
    o(0, 1) = 0;
    for (int64_t k = 1; k <= num_samples; ++k) {
      int64_t remaining = seq_length + 1;
      while (remaining != 0) {
        const int64_t avail = lengths(i) - offset;
        remaining -= avail;
        if (remaining <= 0) {
          offset += remaining + avail - 1;  // the last token is shared with the next sample
          remaining = 0;
        } else {
          ++i;
          offset = 0;
        }
      }
      o(k, 0) = i;
      o(k, 1) = offset;
    }
  }
  return out;
}

void register_sample_index(py::module_& m) {
  m.def("build_sample_index", &build_sample_index, py::arg("doc_lengths"), py::arg("seq_length"),
        py::arg("num_samples"), "Sample index (num_samples + 1, 2) of (document position, offset) rows.");
}
