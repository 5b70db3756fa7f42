// Megatron indexed-dataset builder: the .bin stream and the .idx writer in native code.
//
// Format (lqs_megatron/data/README.md has the full table): the .bin holds the tokens of
// every sequence back to back in one dtype; the .idx is
//   "MMIDIDX\0\0" | u64 version=1 | u8 dtype code | u64 N | u64 D+1 |
//   i32 lengths[N] | i64 byte pointers[N] | i64 document indices[D+1]
// all little-endian, byte-identical to megatron-core's IndexedDatasetBuilder.
//
// One class template Builder<T> per token dtype (T = the .bin element type), bound as
// IndexedBuilder_<dtype name>; lqs_megatron/data/indexed.py is the Python shim that picks
// one. Appends convert the incoming array to T (with a range check) into a buffer that is
// written with large unbuffered writes; byte offsets and counts are 64-bit throughout.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <algorithm>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace py = pybind11;

namespace {

constexpr char kIndexHeader[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
constexpr uint64_t kIndexVersion = 1;

// megatron-core's DType codes.
template <typename T>
struct DTypeCode;
template <>
struct DTypeCode<uint8_t> {
  static constexpr uint8_t code = 1;
  static constexpr const char* name = "uint8";
};
template <>
struct DTypeCode<int8_t> {
  static constexpr uint8_t code = 2;
  static constexpr const char* name = "int8";
};
template <>
struct DTypeCode<int16_t> {
  static constexpr uint8_t code = 3;
  static constexpr const char* name = "int16";
};
template <>
struct DTypeCode<int32_t> {
  static constexpr uint8_t code = 4;
  static constexpr const char* name = "int32";
};
template <>
struct DTypeCode<int64_t> {
  static constexpr uint8_t code = 5;
  static constexpr const char* name = "int64";
};
template <>
struct DTypeCode<double> {
  static constexpr uint8_t code = 6;
  static constexpr const char* name = "float64";
};
template <>
struct DTypeCode<float> {
  static constexpr uint8_t code = 7;
  static constexpr const char* name = "float32";
};
template <>
struct DTypeCode<uint16_t> {
  static constexpr uint8_t code = 8;
  static constexpr const char* name = "uint16";
};

int64_t itemsize_of_code(int code) {
  switch (code) {
    case 1:
    case 2:
      return 1;
    case 3:
    case 8:
      return 2;
    case 4:
    case 7:
      return 4;
    case 5:
    case 6:
      return 8;
    default:
      throw py::value_error("unknown dtype code " + std::to_string(code) + " (expected 1..8)");
  }
}

std::string os_error(const std::string& what, const std::string& path) {
  return what + " " + path + ": " + std::strerror(errno);
}

void write_all(std::FILE* f, const void* data, size_t bytes, const std::string& path) {
  if (bytes == 0) return;
  if (std::fwrite(data, 1, bytes, f) != bytes) throw std::runtime_error(os_error("cannot write", path));
}

// Does the value v (of source type S) fit the token type T?
template <typename T, typename S>
inline bool fits(S v) {
  if constexpr (std::is_floating_point_v<T>) {
    return true;
  } else if constexpr (std::is_signed_v<S>) {
    if (v < 0) {
      if constexpr (std::is_unsigned_v<T>) {
        return false;
      } else {
        return static_cast<int64_t>(v) >= static_cast<int64_t>(std::numeric_limits<T>::min());
      }
    }
    return static_cast<uint64_t>(v) <= static_cast<uint64_t>(std::numeric_limits<T>::max());
  } else {
    return static_cast<uint64_t>(v) <= static_cast<uint64_t>(std::numeric_limits<T>::max());
  }
}

std::vector<int64_t> pointers_from_lengths(const int32_t* lengths, size_t n, int64_t itemsize) {
  std::vector<int64_t> ptr(n);
  int64_t cur = 0;
  for (size_t i = 0; i < n; ++i) {
    ptr[i] = cur;
    cur += static_cast<int64_t>(lengths[i]) * itemsize;
  }
  return ptr;
}

void write_index_file(const std::string& path, uint8_t code, const int32_t* lengths, size_t n, const int64_t* docs,
                      size_t d) {
  const int64_t itemsize = itemsize_of_code(code);
  std::vector<int64_t> pointers = pointers_from_lengths(lengths, n, itemsize);
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) throw std::runtime_error(os_error("cannot create", path));
  try {
    const uint64_t version = kIndexVersion, n64 = n, d64 = d;
    write_all(f, kIndexHeader, sizeof(kIndexHeader), path);
    write_all(f, &version, 8, path);
    write_all(f, &code, 1, path);
    write_all(f, &n64, 8, path);
    write_all(f, &d64, 8, path);
    write_all(f, lengths, n * sizeof(int32_t), path);
    write_all(f, pointers.data(), n * sizeof(int64_t), path);
    write_all(f, docs, d * sizeof(int64_t), path);
  } catch (...) {
    std::fclose(f);
    throw;
  }
  if (std::fclose(f) != 0) throw std::runtime_error(os_error("cannot close", path));
}

template <typename T>
class Builder {
 public:
  Builder(std::string bin_path, size_t buffer_bytes) : path_(std::move(bin_path)) {
    if (buffer_bytes < sizeof(T)) throw py::value_error("buffer_bytes too small");
    buf_.resize(buffer_bytes / sizeof(T));
    file_ = std::fopen(path_.c_str(), "wb");
    if (!file_) throw std::runtime_error(os_error("cannot create", path_));
    std::setvbuf(file_, nullptr, _IONBF, 0);  // we buffer ourselves
    docs_.push_back(0);
  }
  ~Builder() {
    if (file_) std::fclose(file_);
  }
  Builder(const Builder&) = delete;
  Builder& operator=(const Builder&) = delete;

  // One sequence; it joins the current document.
  void add_item(const py::array& tokens) {
    const int64_t n = tokens.size();
    check_length(n);
    append(tokens);
    lengths_.push_back(static_cast<int32_t>(n));
  }

  // Many sequences, concatenated in `tokens`, cut by `lengths`; with end_documents each
  // sequence also closes a document (one sequence per document).
  void add_items(const py::array& tokens, py::array_t<int64_t, py::array::c_style | py::array::forcecast> lengths,
                 bool end_documents) {
    auto len = lengths.unchecked<1>();
    const int64_t m = len.shape(0);
    int64_t total = 0;
    for (int64_t i = 0; i < m; ++i) {
      check_length(len(i));
      total += len(i);
    }
    if (total != tokens.size()) {
      throw py::value_error("the lengths sum to " + std::to_string(total) + " tokens, the array holds " +
                            std::to_string(tokens.size()));
    }
    append(tokens);
    lengths_.reserve(lengths_.size() + m);
    for (int64_t i = 0; i < m; ++i) {
      lengths_.push_back(static_cast<int32_t>(len(i)));
      if (end_documents) docs_.push_back(static_cast<int64_t>(lengths_.size()));
    }
  }

  void end_document() {
    check_open();
    docs_.push_back(static_cast<int64_t>(lengths_.size()));
  }

  // Flush and close the .bin, then write the .idx at idx_path.
  void finalize(const std::string& idx_path) {
    check_open();
    {
      py::gil_scoped_release release;
      flush();
      std::FILE* f = file_;
      file_ = nullptr;
      if (std::fclose(f) != 0) throw std::runtime_error(os_error("cannot close", path_));
      write_index_file(idx_path, DTypeCode<T>::code, lengths_.data(), lengths_.size(), docs_.data(), docs_.size());
    }
    finalized_ = true;
  }

  // Close the .bin without writing an index (the caller removes the files).
  void abort() {
    if (file_) std::fclose(file_);
    file_ = nullptr;
    finalized_ = true;
  }

  int64_t num_sequences() const { return static_cast<int64_t>(lengths_.size()); }
  int64_t num_documents() const { return static_cast<int64_t>(docs_.size()) - 1; }
  int64_t num_tokens() const { return tokens_; }

 private:
  void check_open() const {
    if (finalized_ || !file_) throw std::runtime_error("the builder of " + path_ + " is already finalized");
  }

  static void check_length(int64_t n) {
    if (n < 0 || n > std::numeric_limits<int32_t>::max()) {
      throw py::value_error("sequence length " + std::to_string(n) +
                            " does not fit the index (int32 lengths, at most 2147483647 tokens)");
    }
  }

  void flush() {
    write_all(file_, buf_.data(), used_ * sizeof(T), path_);
    used_ = 0;
  }

  template <typename S>
  void append_typed(const S* src, size_t n) {
    if constexpr (!std::is_same_v<S, T>) {
      for (size_t i = 0; i < n; ++i) {
        if (!fits<T>(src[i])) {
          throw py::value_error("token id " + std::to_string(src[i]) + " at position " + std::to_string(i) +
                                " does not fit the dataset dtype " + DTypeCode<T>::name);
        }
      }
    }
    py::gil_scoped_release release;
    if constexpr (std::is_same_v<S, T>) {
      if (n >= buf_.size()) {  // large: bypass the buffer
        flush();
        write_all(file_, src, n * sizeof(T), path_);
        tokens_ += static_cast<int64_t>(n);
        return;
      }
    }
    size_t done = 0;
    while (done < n) {
      if (used_ == buf_.size()) flush();
      const size_t take = std::min(n - done, buf_.size() - used_);
      T* dst = buf_.data() + used_;
      for (size_t i = 0; i < take; ++i) dst[i] = static_cast<T>(src[done + i]);
      used_ += take;
      done += take;
    }
    tokens_ += static_cast<int64_t>(n);
  }

  void append(const py::array& tokens) {
    check_open();
    py::array arr = py::array::ensure(tokens, py::array::c_style);
    if (!arr) throw py::value_error("tokens must be an array");
    const size_t n = static_cast<size_t>(arr.size());
    if (n == 0) return;
    const char kind = arr.dtype().kind();
    const auto sz = arr.itemsize();
    const void* p = arr.data();
    if (kind == 'i') {
      switch (sz) {
        case 1:
          return append_typed(static_cast<const int8_t*>(p), n);
        case 2:
          return append_typed(static_cast<const int16_t*>(p), n);
        case 4:
          return append_typed(static_cast<const int32_t*>(p), n);
        case 8:
          return append_typed(static_cast<const int64_t*>(p), n);
      }
    } else if (kind == 'u') {
      switch (sz) {
        case 1:
          return append_typed(static_cast<const uint8_t*>(p), n);
        case 2:
          return append_typed(static_cast<const uint16_t*>(p), n);
        case 4:
          return append_typed(static_cast<const uint32_t*>(p), n);
        case 8:
          return append_typed(static_cast<const uint64_t*>(p), n);
      }
    } else if (kind == 'f' && std::is_floating_point_v<T>) {
      switch (sz) {
        case 4:
          return append_typed(static_cast<const float*>(p), n);
        case 8:
          return append_typed(static_cast<const double*>(p), n);
      }
    }
    throw py::value_error(std::string("cannot store an array of dtype ") + std::string(py::str(arr.dtype())) +
                          " in a " + DTypeCode<T>::name + " dataset (token ids must be integers)");
  }

  std::string path_;
  std::FILE* file_ = nullptr;
  std::vector<T> buf_;
  size_t used_ = 0;
  std::vector<int32_t> lengths_;
  std::vector<int64_t> docs_;
  int64_t tokens_ = 0;
  bool finalized_ = false;
};

template <typename T>
void bind_builder(py::module_& m) {
  const std::string name = std::string("IndexedBuilder_") + DTypeCode<T>::name;
  py::class_<Builder<T>>(m, name.c_str(),
                         ("Writes PREFIX.bin (" + std::string(DTypeCode<T>::name) +
                          " tokens) and, on finalize, PREFIX.idx; use lqs_megatron.data.indexed.IndexedDatasetWriter.")
                             .c_str())
      .def(py::init<std::string, size_t>(), py::arg("bin_path"), py::arg("buffer_bytes") = size_t{4} << 20)
      .def("add_item", &Builder<T>::add_item, py::arg("tokens"), "Append one sequence to the current document.")
      .def("add_items", &Builder<T>::add_items, py::arg("tokens"), py::arg("lengths"), py::arg("end_documents"),
           "Append len(lengths) sequences cut from tokens; end_documents closes a document after each.")
      .def("end_document", &Builder<T>::end_document)
      .def("finalize", &Builder<T>::finalize, py::arg("idx_path"))
      .def("abort", &Builder<T>::abort)
      .def_property_readonly("num_sequences", &Builder<T>::num_sequences)
      .def_property_readonly("num_documents", &Builder<T>::num_documents)
      .def_property_readonly("num_tokens", &Builder<T>::num_tokens);
}

}  // namespace

void register_indexed_builder(py::module_& m) {
  bind_builder<uint8_t>(m);
  bind_builder<int8_t>(m);
  bind_builder<int16_t>(m);
  bind_builder<int32_t>(m);
  bind_builder<int64_t>(m);
  bind_builder<double>(m);
  bind_builder<float>(m);
  bind_builder<uint16_t>(m);
  m.def(
      "write_index",
      [](const std::string& path, int code, py::array_t<int32_t, py::array::c_style | py::array::forcecast> lengths,
         py::array_t<int64_t, py::array::c_style | py::array::forcecast> document_indices) {
        itemsize_of_code(code);
        const int32_t* l = lengths.data();
        const int64_t* d = document_indices.data();
        const size_t n = lengths.size(), nd = document_indices.size();
        py::gil_scoped_release release;
        write_index_file(path, static_cast<uint8_t>(code), l, n, d, nd);
      },
      py::arg("path"), py::arg("dtype_code"), py::arg("sequence_lengths"), py::arg("document_indices"),
      "Write an .idx file (header, lengths, 64-bit byte pointers, document indices).");
  m.def(
      "sequence_pointers",
      [](py::array_t<int32_t, py::array::c_style | py::array::forcecast> lengths, int64_t itemsize) {
        std::vector<int64_t> p = pointers_from_lengths(lengths.data(), lengths.size(), itemsize);
        py::array_t<int64_t> out(static_cast<py::ssize_t>(p.size()));
        if (!p.empty()) std::memcpy(out.mutable_data(), p.data(), p.size() * sizeof(int64_t));
        return out;
      },
      py::arg("sequence_lengths"), py::arg("itemsize"), "Byte offset of each sequence in the .bin (int64).");
}
