// lqs_megatron._C: the native hot loops. Each concept has its own .cpp with a
// register_* function; this file only assembles the module.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void register_sample_index(py::module_& m);
void register_indexed_builder(py::module_& m);
void register_word_cache(py::module_& m);
void register_token_rows(py::module_& m);
void register_special_strings(py::module_& m);
void register_jsonl_text(py::module_& m);

PYBIND11_MODULE(_C, m) {
  m.doc() = "lqs_megatron native helpers: indexed-dataset builder, sample-index packing, tokenizer word cache, row assembly, jsonl text fields";
  register_sample_index(m);
  register_indexed_builder(m);
  register_word_cache(m);
  register_token_rows(m);
  register_special_strings(m);
  register_jsonl_text(m);
}
