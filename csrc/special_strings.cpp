// Which texts hold one of a tokenizer's added-token strings (or are empty): the backend splits
// those out before encoding, so such texts must not take the fast paths (data/tokenizer.py,
// BatchEncoder._plain). A byte scan over the texts' UTF-8 with a first-byte table, instead of
// one substring search per token (Llama-3 has 256 of them).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace py = pybind11;

namespace {

class SpecialStrings {
 public:
  explicit SpecialStrings(const std::vector<std::string>& strings) {
    for (const std::string& s : strings) {
      if (s.empty()) continue;
      auto& bucket = by_first_[static_cast<unsigned char>(s[0])];
      if (bucket.empty()) firsts_.push_back(static_cast<unsigned char>(s[0]));
      bucket.push_back(s);
      ++count_;
    }
  }

  // One flag per text: true when the text is not empty and holds none of the strings.
  std::vector<bool> plain(const py::sequence& texts) const {
    std::vector<std::string_view> views;
    views.reserve(texts.size());
    for (auto t : texts) {
      if (!PyUnicode_Check(t.ptr())) throw py::type_error("texts must be str");
      Py_ssize_t n = 0;
      const char* s = PyUnicode_AsUTF8AndSize(t.ptr(), &n);  // cached in the str object
      if (s == nullptr) throw py::error_already_set();
      views.emplace_back(s, static_cast<size_t>(n));
    }
    std::vector<bool> out(views.size());
    py::gil_scoped_release release;
    for (size_t i = 0; i < views.size(); ++i) out[i] = !views[i].empty() && !holds_any(views[i]);
    return out;
  }

  size_t size() const { return count_; }

 private:
  bool holds_any(std::string_view text) const {
    if (count_ == 0) return false;
    const char* const begin = text.data();
    const char* const end = begin + text.size();
    auto match_at = [&](const char* p) {
      for (const std::string& s : by_first_[static_cast<unsigned char>(*p)])
        if (static_cast<size_t>(end - p) >= s.size() && std::memcmp(p, s.data(), s.size()) == 0) return true;
      return false;
    };
    if (firsts_.size() <= kMemchrFirsts) {  // few first bytes ('<' for most tokenizers): memchr runs
      for (unsigned char f : firsts_)
        for (const char* p = begin; (p = static_cast<const char*>(std::memchr(p, f, end - p))) != nullptr; ++p)
          if (match_at(p)) return true;
      return false;
    }
    for (const char* p = begin; p < end; ++p)
      if (!by_first_[static_cast<unsigned char>(*p)].empty() && match_at(p)) return true;
    return false;
  }

  static constexpr size_t kMemchrFirsts = 4;
  std::vector<unsigned char> firsts_;

  std::array<std::vector<std::string>, 256> by_first_;
  size_t count_ = 0;
};

}  // namespace

void register_special_strings(py::module_& m) {
  py::class_<SpecialStrings>(m, "SpecialStrings", "Added-token strings to look for in texts (data/tokenizer.py).")
      .def(py::init<const std::vector<std::string>&>(), py::arg("strings"))
      .def("plain", &SpecialStrings::plain, py::arg("texts"),
           "One bool per text: not empty and holding none of the strings.")
      .def_property_readonly("size", &SpecialStrings::size);
}
