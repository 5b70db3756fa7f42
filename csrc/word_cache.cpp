// Word cache for sentencepiece-style BPE encoding: see lqs_megatron/data/word_cache.py for when it
// applies and why its ids equal whole-text encoding (tests compare the two on real and random text).
//
// A text is cut into segments of " " + text: a new segment starts at each whitespace mark (' ' or
// U+2581 '▁', what the sentencepiece normaliser maps spaces to) that follows a non-mark character;
// the first segment carries the normaliser's prepended mark. Each distinct segment is encoded
// once by the tokenizer (in Python, through `misses`/`fill`) and its ids kept here; `assemble`
// then concatenates the cached ids of every segment of every text, appends EOS, truncates, and
// hands back one flat token array and the per-text lengths.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "token_rows.h"

namespace py = pybind11;

namespace {

constexpr uint32_t kPending = 0xFFFFFFFFu;
constexpr size_t kArenaBlock = 1 << 20;
constexpr size_t kEntryOverhead = 64;  // hash node, bucket and bookkeeping per cached segment (bytes)

// Bytes of the whitespace mark starting at p: 1 for ' ', 3 for U+2581, 0 for anything else.
inline size_t mark_length(const char* p, const char* end) {
  if (*p == ' ') return 1;
  if (static_cast<unsigned char>(p[0]) == 0xE2 && end - p >= 3 && static_cast<unsigned char>(p[1]) == 0x96 &&
      static_cast<unsigned char>(p[2]) == 0x81)
    return 3;
  return 0;
}

std::string_view utf8_view(py::handle h) {
  Py_ssize_t n = 0;
  const char* s = PyUnicode_AsUTF8AndSize(h.ptr(), &n);  // cached in the str object: no copy
  if (s == nullptr) throw py::error_already_set();
  return {s, static_cast<size_t>(n)};
}

std::vector<std::string_view> utf8_views(const py::sequence& texts) {
  std::vector<std::string_view> views;
  views.reserve(texts.size());
  for (auto t : texts) {
    if (!PyUnicode_Check(t.ptr())) throw py::type_error("texts must be str");
    views.push_back(utf8_view(t));
  }
  return views;
}

// Calls f(segment) for each segment of " " + text (nothing for an empty text). The first segment,
// which starts with the virtual mark, is built in `first`.
template <class F>
void for_each_segment(std::string_view text, std::string& first, F&& f) {
  if (text.empty()) return;
  const char* p = text.data();
  const char* const end = p + text.size();
  const char* seg = p;
  bool prev_mark = true;  // the prepended mark
  bool is_first = true;
  auto emit = [&](const char* stop) {
    if (is_first) {
      first.assign(1, ' ');
      first.append(seg, stop - seg);
      f(std::string_view(first));
      is_first = false;
    } else {
      f(std::string_view(seg, stop - seg));
    }
  };
  while (p < end) {
    const size_t m = mark_length(p, end);
    if (m != 0) {
      if (!prev_mark) {
        emit(p);
        seg = p;
      }
      prev_mark = true;
      p += m;
    } else {
      prev_mark = false;
      ++p;
    }
  }
  emit(end);
}

struct Entry {
  uint64_t offset;
  uint32_t length;  // kPending until `fill` gives the ids
};

class WordCache {
 public:
  explicit WordCache(size_t max_bytes) : max_bytes_(max_bytes) {}

  // Distinct segments of `texts` not in the cache, normalised (marks as U+2581), in first-seen
  // order; they are remembered until `fill` gives their ids. Clears the cache first when it has
  // outgrown its budget.
  py::list misses(const py::sequence& texts) {
    if (!pending_.empty()) throw std::logic_error("WordCache.misses called again before fill");
    if (bytes_ > max_bytes_) clear();
    const std::vector<std::string_view> views = utf8_views(texts);
    std::vector<std::string> normalised;
    {
      py::gil_scoped_release release;
      std::string first;
      for (std::string_view text : views) {
        for_each_segment(text, first, [&](std::string_view seg) {
          if (map_.find(seg) != map_.end()) return;
          const std::string_view key = store_key(seg);
          map_.emplace(key, Entry{0, kPending});
          pending_.push_back(key);
          normalised.push_back(normalise(key));
        });
      }
    }
    py::list out(normalised.size());
    for (size_t i = 0; i < normalised.size(); ++i) {
      PyObject* s = PyUnicode_DecodeUTF8(normalised[i].data(), static_cast<Py_ssize_t>(normalised[i].size()), "strict");
      if (s == nullptr) throw py::error_already_set();
      PyList_SET_ITEM(out.ptr(), static_cast<Py_ssize_t>(i), s);
    }
    return out;
  }

  // The ids of the segments `misses` returned, in its order. On an error the listed segments are
  // forgotten (as by `abandon`), so the cache is ready for the next batch.
  void fill(const py::sequence& ids) {
    try {
      if (static_cast<size_t>(ids.size()) != pending_.size())
        throw std::invalid_argument("WordCache.fill: got " + std::to_string(ids.size()) + " id lists for " +
                                    std::to_string(pending_.size()) + " segments");
      for (size_t i = 0; i < pending_.size(); ++i) {
        const auto seq = ids[i].cast<std::vector<int64_t>>();
        for (int64_t v : seq)
          if (v < 0 || v > INT32_MAX) throw std::invalid_argument("token id out of int32 range: " + std::to_string(v));
        Entry& e = map_.at(pending_[i]);
        e.offset = ids_.size();
        e.length = static_cast<uint32_t>(seq.size());
        ids_.insert(ids_.end(), seq.begin(), seq.end());
        bytes_ += seq.size() * sizeof(int32_t);
      }
    } catch (...) {
      abandon();
      throw;
    }
    pending_.clear();
  }

  // Forget the segments the last `misses` listed and that have no ids yet.
  void abandon() {
    for (std::string_view key : pending_) {
      auto it = map_.find(key);
      if (it != map_.end() && it->second.length == kPending) map_.erase(it);
    }
    pending_.clear();
  }

  // (tokens int32 [sum(lengths)], lengths int64 [len(texts)], truncated texts, dropped tokens):
  // per text prefix + segment ids + suffix, then EOS appended unless the text already ends with
  // it (eos < 0: none), then cut to max_length with EOS kept last (max_length <= 0: no limit).
  py::tuple assemble(const py::sequence& texts, const std::vector<int32_t>& prefix,
                     const std::vector<int32_t>& suffix, int64_t eos, int64_t max_length) {
    if (!pending_.empty()) throw std::logic_error("WordCache.assemble called before fill");
    const std::vector<std::string_view> views = utf8_views(texts);
    auto tokens = std::make_unique<std::vector<int32_t>>();
    std::vector<int64_t> lengths(views.size());
    int64_t truncated = 0, dropped = 0;
    bool missing = false;
    {
      py::gil_scoped_release release;
      size_t chars = 0;
      for (std::string_view v : views) chars += v.size();
      tokens->reserve(chars / 3 + views.size() * (prefix.size() + suffix.size() + 1));
      std::string first;
      for (size_t i = 0; i < views.size(); ++i) {
        const size_t start = tokens->size();
        tokens->insert(tokens->end(), prefix.begin(), prefix.end());
        for_each_segment(views[i], first, [&](std::string_view seg) {
          auto it = map_.find(seg);
          if (it == map_.end() || it->second.length == kPending) {
            missing = true;
            return;
          }
          const int32_t* src = ids_.data() + it->second.offset;
          tokens->insert(tokens->end(), src, src + it->second.length);
        });
        const int64_t n = finish_row(*tokens, start, suffix, eos, max_length, truncated, dropped);
        lengths[i] = n;
      }
    }
    if (missing) throw std::logic_error("WordCache.assemble: a segment was not filled (call misses and fill first)");
    return rows_result(std::move(tokens), lengths, truncated, dropped);
  }

  void clear() {
    if (!pending_.empty()) throw std::logic_error("WordCache.clear called between misses and fill");
    map_.clear();
    ids_.clear();
    ids_.shrink_to_fit();
    arena_.clear();
    arena_left_ = 0;
    bytes_ = 0;
  }

  size_t size() const { return map_.size(); }
  size_t bytes() const { return bytes_; }
  size_t max_bytes() const { return max_bytes_; }

 private:
  std::string_view store_key(std::string_view seg) {
    if (seg.size() > arena_left_) {
      const size_t block = seg.size() > kArenaBlock ? seg.size() : kArenaBlock;
      arena_.push_back(std::make_unique<char[]>(block));
      arena_ptr_ = arena_.back().get();
      arena_left_ = block;
    }
    std::memcpy(arena_ptr_, seg.data(), seg.size());
    const std::string_view key(arena_ptr_, seg.size());
    arena_ptr_ += seg.size();
    arena_left_ -= seg.size();
    bytes_ += seg.size() + kEntryOverhead;
    return key;
  }

  static std::string normalise(std::string_view key) {
    std::string out;
    out.reserve(key.size() + 8);
    for (char c : key) {
      if (c == ' ')
        out.append("\xE2\x96\x81");
      else
        out.push_back(c);
    }
    return out;
  }

  size_t max_bytes_;
  size_t bytes_ = 0;
  std::unordered_map<std::string_view, Entry> map_;
  std::vector<std::unique_ptr<char[]>> arena_;
  char* arena_ptr_ = nullptr;
  size_t arena_left_ = 0;
  std::vector<int32_t> ids_;
  std::vector<std::string_view> pending_;
};

}  // namespace

void register_word_cache(py::module_& m) {
  py::class_<WordCache>(m, "WordCache",
                        "Segment -> ids cache for sentencepiece-style BPE (lqs_megatron/data/word_cache.py).")
      .def(py::init<size_t>(), py::arg("max_bytes"))
      .def("misses", &WordCache::misses, py::arg("texts"),
           "Distinct uncached segments of the texts, normalised, to encode and pass to fill().")
      .def("fill", &WordCache::fill, py::arg("ids"), "Ids of the segments the last misses() returned.")
      .def("abandon", &WordCache::abandon, "Forget the segments the last misses() listed (no fill).")
      .def("assemble", &WordCache::assemble, py::arg("texts"), py::arg("prefix"), py::arg("suffix"),
           py::arg("eos"), py::arg("max_length"),
           "(tokens int32, lengths int64, truncated, dropped) of the texts from cached segment ids.")
      .def("clear", &WordCache::clear)
      .def_property_readonly("size", &WordCache::size)
      .def_property_readonly("bytes", &WordCache::bytes)
      .def_property_readonly("max_bytes", &WordCache::max_bytes);
}
