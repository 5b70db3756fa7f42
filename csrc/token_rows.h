// Row assembly shared by the word cache (word_cache.cpp) and the flat-row helper (token_rows.cpp):
// the rules `lqs tokenize` applies to each document's ids (docs/data.md, document mode).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

// Closes the row that starts at tokens[start] (its prefix and ids already appended): appends
// `suffix`, then EOS unless the row already ends with it (eos < 0: none), then cuts the row to
// max_length tokens keeping EOS last (max_length <= 0: no limit). Returns the row's length and
// counts a cut in `truncated` / `dropped`.
inline int64_t finish_row(std::vector<int32_t>& tokens, size_t start, const std::vector<int32_t>& suffix, int64_t eos,
                          int64_t max_length, int64_t& truncated, int64_t& dropped) {
  tokens.insert(tokens.end(), suffix.begin(), suffix.end());
  if (eos >= 0 && (tokens.size() == start || tokens.back() != eos)) tokens.push_back(static_cast<int32_t>(eos));
  int64_t n = static_cast<int64_t>(tokens.size() - start);
  if (max_length > 0 && n > max_length) {
    truncated += 1;
    dropped += n - max_length;
    tokens.resize(start + static_cast<size_t>(max_length));
    if (eos >= 0) tokens.back() = static_cast<int32_t>(eos);
    n = max_length;
  }
  return n;
}

// A finished batch as Python sees it: (tokens int32 array owning the vector, lengths int64 array,
// truncated, dropped).
inline pybind11::tuple rows_result(std::unique_ptr<std::vector<int32_t>> tokens, const std::vector<int64_t>& lengths,
                                   int64_t truncated, int64_t dropped) {
  namespace py = pybind11;
  std::vector<int32_t>* raw = tokens.release();
  py::capsule owner(raw, [](void* p) { delete static_cast<std::vector<int32_t>*>(p); });
  py::array_t<int32_t> tok_arr({static_cast<py::ssize_t>(raw->size())}, {sizeof(int32_t)}, raw->data(), owner);
  py::array_t<int64_t> len_arr(static_cast<py::ssize_t>(lengths.size()));
  if (!lengths.empty()) std::memcpy(len_arr.mutable_data(), lengths.data(), lengths.size() * sizeof(int64_t));
  return py::make_tuple(tok_arr, len_arr, truncated, dropped);
}
