// Flat rows -> a `lqs tokenize` batch: the ids of each document (one flat array plus row offsets,
// as gigatoken returns them) with the post-processor's prefix/suffix, EOS and truncation applied
// by the same rule as the word cache (token_rows.h), into one int32 array and per-row lengths.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "token_rows.h"

namespace py = pybind11;

namespace {

using IdArray = py::array_t<uint32_t, py::array::c_style | py::array::forcecast>;
using OffsetArray = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

// Appends n ids (a vectorisable copy; one range check for all).
void append_ids(std::vector<int32_t>& tokens, const uint32_t* src, size_t n) {
  const size_t at = tokens.size();
  tokens.resize(at + n);
  int32_t* dst = tokens.data() + at;
  uint32_t any = 0;
  for (size_t k = 0; k < n; ++k) {
    any |= src[k];
    dst[k] = static_cast<int32_t>(src[k]);
  }
  if (any > static_cast<uint32_t>(INT32_MAX)) throw std::invalid_argument("a token id is out of the int32 range");
}

py::tuple assemble_rows(const IdArray& ids, const OffsetArray& offsets, const std::vector<int32_t>& prefix,
                        const std::vector<int32_t>& suffix, int64_t eos, int64_t max_length) {
  if (ids.ndim() != 1 || offsets.ndim() != 1 || offsets.shape(0) < 1)
    throw std::invalid_argument("assemble_rows: ids and offsets must be 1-D, offsets non-empty");
  const uint32_t* src = ids.data();
  const int64_t* off = offsets.data();
  const size_t rows = static_cast<size_t>(offsets.shape(0) - 1);
  const int64_t n_ids = ids.shape(0);
  if (off[0] != 0 || off[rows] != n_ids) throw std::invalid_argument("assemble_rows: offsets must span ids");
  auto tokens = std::make_unique<std::vector<int32_t>>();
  std::vector<int64_t> lengths(rows);
  int64_t truncated = 0, dropped = 0;
  {
    py::gil_scoped_release release;
    tokens->reserve(static_cast<size_t>(n_ids) + rows * (prefix.size() + suffix.size() + 1));
    for (size_t r = 0; r < rows; ++r) {
      if (off[r + 1] < off[r]) throw std::invalid_argument("assemble_rows: offsets must not decrease");
      const size_t start = tokens->size();
      tokens->insert(tokens->end(), prefix.begin(), prefix.end());
      append_ids(*tokens, src + off[r], static_cast<size_t>(off[r + 1] - off[r]));
      lengths[r] = finish_row(*tokens, start, suffix, eos, max_length, truncated, dropped);
    }
  }
  return rows_result(std::move(tokens), lengths, truncated, dropped);
}

// The same from one array per row (what gigatoken's per-text encode returns): no concatenation first.
py::tuple assemble_arrays(const py::sequence& rows, const std::vector<int32_t>& prefix,
                          const std::vector<int32_t>& suffix, int64_t eos, int64_t max_length) {
  std::vector<IdArray> arrays;
  arrays.reserve(rows.size());
  size_t n_ids = 0;
  for (auto r : rows) {
    arrays.push_back(r.cast<IdArray>());
    if (arrays.back().ndim() != 1) throw std::invalid_argument("assemble_arrays: rows must be 1-D");
    n_ids += static_cast<size_t>(arrays.back().shape(0));
  }
  auto tokens = std::make_unique<std::vector<int32_t>>();
  std::vector<int64_t> lengths(arrays.size());
  int64_t truncated = 0, dropped = 0;
  {
    py::gil_scoped_release release;
    tokens->reserve(n_ids + arrays.size() * (prefix.size() + suffix.size() + 1));
    for (size_t r = 0; r < arrays.size(); ++r) {
      const size_t start = tokens->size();
      tokens->insert(tokens->end(), prefix.begin(), prefix.end());
      append_ids(*tokens, arrays[r].data(), static_cast<size_t>(arrays[r].shape(0)));
      lengths[r] = finish_row(*tokens, start, suffix, eos, max_length, truncated, dropped);
    }
  }
  return rows_result(std::move(tokens), lengths, truncated, dropped);
}

}  // namespace

void register_token_rows(py::module_& m) {
  m.def("assemble_rows", &assemble_rows, py::arg("ids"), py::arg("offsets"), py::arg("prefix"), py::arg("suffix"),
        py::arg("eos"), py::arg("max_length"),
        "(tokens int32, lengths int64, truncated, dropped): rows ids[offsets[i]:offsets[i+1]] with prefix, "
        "suffix, EOS (unless already last; eos < 0: none) and truncation to max_length (EOS kept; <= 0: none).");
  m.def("assemble_arrays", &assemble_arrays, py::arg("rows"), py::arg("prefix"), py::arg("suffix"), py::arg("eos"),
        py::arg("max_length"), "assemble_rows from a list of 1-D id arrays, one per row.");
}
