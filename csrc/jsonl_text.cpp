// The text field of a batch of jsonl lines, without a Python object per JSON value: what
// `lqs tokenize`'s workers otherwise get from json.loads + get_text (lqs_megatron/data/jsonl.py).
//
// The result must equal the Python reader's exactly, so this accepts only lines whose meaning is
// certain and gives up on the whole batch (None: the caller takes the Python path, which also
// reports the errors) on anything else. A line is taken when it is
//   - blank (only ' \t\n\r\v\f': skipped, as the reader skips it), or
//   - valid UTF-8 holding one JSON object (RFC 8259; surrounding whitespace ' \t\n\r'), nested
//     at most kMaxDepth deep, whose key `field` (last occurrence, as json.loads keeps it) holds a
//     string with at least one character that str.isspace() cannot call whitespace.
// Given up: invalid UTF-8 or JSON, NaN/Infinity (Python accepts them), \u escapes of unpaired
// surrogates (Python keeps them in the str), a missing or non-string field, a text that might be
// empty or whitespace only (the reader's "empty" error).
#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace py = pybind11;

namespace {

constexpr int kMaxDepth = 64;

// Bytes that stand for themselves inside a JSON string: printable ASCII but '"' and '\\'.
struct PlainChars {
  bool table[256];
  constexpr PlainChars() : table() {
    for (int c = 0; c < 256; ++c) table[c] = c >= 0x20 && c < 0x80 && c != '"' && c != '\\';
  }
  constexpr bool operator[](unsigned char c) const { return table[c]; }
};
constexpr PlainChars kPlainChar;

class Parser {
 public:
  Parser(const char* p, const char* end) : p_(reinterpret_cast<const unsigned char*>(p)),
                                           end_(reinterpret_cast<const unsigned char*>(end)) {}

  // The top-level object; `field`'s string value (decoded UTF-8) into `text`, `found` if present.
  bool document(std::string_view field, std::string& text, bool& found, bool& is_string) {
    ws();
    if (!object_with_field(field, text, found, is_string)) return false;
    ws();
    return p_ == end_;
  }

 private:
  void ws() {
    while (p_ < end_ && (*p_ == ' ' || *p_ == '\t' || *p_ == '\n' || *p_ == '\r')) ++p_;
  }

  bool literal(const char* word) {
    const size_t n = std::strlen(word);
    if (static_cast<size_t>(end_ - p_) < n || std::memcmp(p_, word, n) != 0) return false;
    p_ += n;
    return true;
  }

  bool number() {
    if (p_ < end_ && *p_ == '-') ++p_;
    if (p_ >= end_) return false;
    if (*p_ == '0') {
      ++p_;
    } else if (*p_ >= '1' && *p_ <= '9') {
      while (p_ < end_ && *p_ >= '0' && *p_ <= '9') ++p_;
    } else {
      return false;
    }
    if (p_ < end_ && *p_ == '.') {
      ++p_;
      if (p_ >= end_ || *p_ < '0' || *p_ > '9') return false;
      while (p_ < end_ && *p_ >= '0' && *p_ <= '9') ++p_;
    }
    if (p_ < end_ && (*p_ == 'e' || *p_ == 'E')) {
      ++p_;
      if (p_ < end_ && (*p_ == '+' || *p_ == '-')) ++p_;
      if (p_ >= end_ || *p_ < '0' || *p_ > '9') return false;
      while (p_ < end_ && *p_ >= '0' && *p_ <= '9') ++p_;
    }
    return true;
  }

  static void put_utf8(uint32_t c, std::string* out) {
    if (out == nullptr) return;
    if (c < 0x80) {
      out->push_back(static_cast<char>(c));
    } else if (c < 0x800) {
      out->push_back(static_cast<char>(0xC0 | (c >> 6)));
      out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
    } else if (c < 0x10000) {
      out->push_back(static_cast<char>(0xE0 | (c >> 12)));
      out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
    } else {
      out->push_back(static_cast<char>(0xF0 | (c >> 18)));
      out->push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
    }
  }

  bool hex4(uint32_t& v) {
    if (end_ - p_ < 4) return false;
    v = 0;
    for (int i = 0; i < 4; ++i) {
      const unsigned char c = *p_++;
      v <<= 4;
      if (c >= '0' && c <= '9') v |= c - '0';
      else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
      else return false;
    }
    return true;
  }

  // Length of the valid UTF-8 sequence (2-4 bytes) at p_, as Python's strict decoder accepts
  // it (no overlongs, no surrogates, at most U+10FFFF); 0 when invalid.
  size_t utf8_sequence() const {
    const unsigned char c = p_[0];
    const ptrdiff_t left = end_ - p_;
    auto cont = [&](int i) { return i < left && (p_[i] & 0xC0) == 0x80; };
    if (c >= 0xC2 && c <= 0xDF) return cont(1) ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
      if (!cont(1) || !cont(2)) return 0;
      if (c == 0xE0 && p_[1] < 0xA0) return 0;  // overlong
      if (c == 0xED && p_[1] >= 0xA0) return 0;  // surrogate
      return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
      if (!cont(1) || !cont(2) || !cont(3)) return 0;
      if (c == 0xF0 && p_[1] < 0x90) return 0;  // overlong
      if (c == 0xF4 && p_[1] >= 0x90) return 0;  // above U+10FFFF
      return 4;
    }
    return 0;
  }

  // A string at p_ (the opening quote); decoded into `out` unless it is null.
  bool string(std::string* out) {
    if (p_ >= end_ || *p_ != '"') return false;
    ++p_;
    for (;;) {
      const unsigned char* run = p_;
      while (p_ < end_ && kPlainChar[*p_]) ++p_;
      if (out != nullptr) out->append(reinterpret_cast<const char*>(run), p_ - run);
      if (p_ >= end_) return false;
      const unsigned char c = *p_;
      if (c == '"') {
        ++p_;
        return true;
      }
      if (c < 0x20) return false;  // json.loads(strict=True) rejects control characters
      if (c >= 0x80) {
        const size_t n = utf8_sequence();
        if (n == 0) return false;
        if (out != nullptr) out->append(reinterpret_cast<const char*>(p_), n);
        p_ += n;
        continue;
      }
      ++p_;  // a backslash
      if (p_ >= end_) return false;
      const unsigned char e = *p_++;
      switch (e) {
        case '"': put_utf8('"', out); break;
        case '\\': put_utf8('\\', out); break;
        case '/': put_utf8('/', out); break;
        case 'b': put_utf8('\b', out); break;
        case 'f': put_utf8('\f', out); break;
        case 'n': put_utf8('\n', out); break;
        case 'r': put_utf8('\r', out); break;
        case 't': put_utf8('\t', out); break;
        case 'u': {
          uint32_t v = 0;
          if (!hex4(v)) return false;
          if (v >= 0xDC00 && v <= 0xDFFF) return false;  // unpaired low surrogate
          if (v >= 0xD800 && v <= 0xDBFF) {
            uint32_t lo = 0;
            if (end_ - p_ < 6 || p_[0] != '\\' || p_[1] != 'u') return false;  // unpaired high surrogate
            p_ += 2;
            if (!hex4(lo) || lo < 0xDC00 || lo > 0xDFFF) return false;
            v = 0x10000 + ((v - 0xD800) << 10) + (lo - 0xDC00);
          }
          put_utf8(v, out);
          break;
        }
        default:
          return false;
      }
    }
  }

  bool value(int depth) {
    if (p_ >= end_) return false;
    switch (*p_) {
      case '"': return string(nullptr);
      case '{': return container(depth + 1, '}');
      case '[': return container(depth + 1, ']');
      case 't': return literal("true");
      case 'f': return literal("false");
      case 'n': return literal("null");
      default: return number();
    }
  }

  // An object or array whose opening bracket is at p_, its contents checked and skipped.
  bool container(int depth, char close) {
    if (depth > kMaxDepth) return false;
    ++p_;
    ws();
    if (p_ < end_ && *p_ == static_cast<unsigned char>(close)) {
      ++p_;
      return true;
    }
    for (;;) {
      if (close == '}' && !(string(nullptr) && colon())) return false;
      if (!value(depth)) return false;
      const int next = next_or_close(close);
      if (next <= 0) return next == 0;
    }
  }

  // The ':' after an object's key, and the whitespace around it.
  bool colon() {
    ws();
    if (p_ >= end_ || *p_ != ':') return false;
    ++p_;
    ws();
    return true;
  }

  // After a member or element: 1 when a ',' follows (another comes), 0 at the closing bracket
  // (consumed), -1 for anything else.
  int next_or_close(char close) {
    ws();
    if (p_ >= end_) return -1;
    if (*p_ == ',') {
      ++p_;
      ws();
      return 1;
    }
    if (*p_ != static_cast<unsigned char>(close)) return -1;
    ++p_;
    return 0;
  }

  bool object_with_field(std::string_view field, std::string& text, bool& found, bool& is_string) {
    if (p_ >= end_ || *p_ != '{') return false;
    ++p_;
    ws();
    if (p_ < end_ && *p_ == '}') {
      ++p_;
      return true;
    }
    std::string key;
    for (;;) {
      key.clear();
      if (!string(&key) || !colon()) return false;
      if (key == field) {
        found = true;
        is_string = p_ < end_ && *p_ == '"';
        text.clear();
        if (is_string ? !string(&text) : !value(1)) return false;
      } else if (!value(1)) {
        return false;
      }
      const int next = next_or_close('}');
      if (next <= 0) return next == 0;
    }
  }

  const unsigned char* p_;
  const unsigned char* const end_;
};

bool blank(std::string_view line) {
  for (unsigned char c : line)
    if (!(c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f')) return false;
  return true;
}

// Whether the code point might be whitespace for str.isspace(): a superset of Python's set
// (ASCII \t-\r, \x1c-\x1f, space; U+0085, U+00A0, U+1680, U+2000-U+200A, U+2028, U+2029,
// U+202F, U+205F, U+3000), plus a few format characters that are close calls.
bool maybe_space(uint32_t c) {
  if (c < 0x80) return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20);
  return c == 0x85 || c == 0xA0 || c == 0x1680 || c == 0x180E || (c >= 0x2000 && c <= 0x200B) || c == 0x2028 ||
         c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x2060 || c == 0x3000 || c == 0xFEFF;
}

// Whether the (valid UTF-8) text holds a character that is certainly not whitespace.
bool has_content(std::string_view text) {
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const auto* end = p + text.size();
  while (p < end) {
    uint32_t c = *p;
    size_t n = 1;
    if (c >= 0xF0) {
      c = ((c & 0x07) << 18) | ((p[1] & 0x3F) << 12) | ((p[2] & 0x3F) << 6) | (p[3] & 0x3F);
      n = 4;
    } else if (c >= 0xE0) {
      c = ((c & 0x0F) << 12) | ((p[1] & 0x3F) << 6) | (p[2] & 0x3F);
      n = 3;
    } else if (c >= 0xC0) {
      c = ((c & 0x1F) << 6) | (p[1] & 0x3F);
      n = 2;
    }
    if (!maybe_space(c)) return true;
    p += n;
  }
  return false;
}

// The texts of the batch's non-blank lines, or None to take the Python reader.
py::object jsonl_texts(const py::sequence& lines, const std::string& field) {
  std::vector<std::string_view> views;
  views.reserve(lines.size());
  for (auto line : lines) {
    char* s = nullptr;
    Py_ssize_t n = 0;
    if (!PyBytes_Check(line.ptr()) || PyBytes_AsStringAndSize(line.ptr(), &s, &n) != 0) {
      PyErr_Clear();
      throw py::type_error("jsonl_texts: lines must be bytes");
    }
    views.emplace_back(s, static_cast<size_t>(n));
  }
  std::vector<std::string> texts;
  texts.reserve(views.size());
  bool ok = true;
  {
    py::gil_scoped_release release;
    std::string text;
    for (std::string_view line : views) {
      if (blank(line)) continue;
      bool found = false, is_string = false;
      Parser parser(line.data(), line.data() + line.size());
      if (!parser.document(field, text, found, is_string) || !found || !is_string || !has_content(text)) {
        ok = false;
        break;
      }
      texts.push_back(text);
    }
  }
  if (!ok) return py::none();
  py::list out(texts.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    PyObject* s = PyUnicode_DecodeUTF8(texts[i].data(), static_cast<Py_ssize_t>(texts[i].size()), "strict");
    if (s == nullptr) throw py::error_already_set();
    PyList_SET_ITEM(out.ptr(), static_cast<Py_ssize_t>(i), s);
  }
  return out;
}

}  // namespace

void register_jsonl_text(py::module_& m) {
  m.def("jsonl_texts", &jsonl_texts, py::arg("lines"), py::arg("field"),
        "The string `field` of each non-blank jsonl line (bytes), as json.loads + the reader's checks give "
        "it; None when a line needs the Python reader (an error, NaN, a lone surrogate, a maybe-empty text).");
}
