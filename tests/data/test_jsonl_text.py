"""``_C.jsonl_texts`` (csrc/jsonl_text.cpp), the native text-field reader of ``lqs tokenize``'s
workers, gives exactly what the Python reader gives (``is_blank`` + ``parse_line`` + ``get_text``)
or gives up (``None``) so that the Python reader runs: on valid lines of every shape, and on
lines mutated into the corners (invalid UTF-8 and JSON, duplicate keys, lone surrogates,
NaN, control characters, whitespace-only and non-string fields, deep nesting)."""

import json
import random

import pytest

from lqs_megatron import _C
from lqs_megatron.data.preprocess.jsonl import BadLine, get_text, is_blank, parse_line

CHARS = [
    "a",
    "Z",
    " ",
    "  ",
    "\t",
    "\n",
    "\r",
    '"',
    "\\",
    "/",
    "\x00",
    "\x1f",
    "\x7f",
    "é",
    "日",
    "😀",
    "\u2028",
    "\u00a0",
    "\u3000",
    "\x1c",
    "\x85",
    "\ufeff",
    "\U0010ffff",
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
]


def python_texts(lines: list[bytes], field: str):
    """The Python reader's texts of the batch, or the BadLine it raises."""
    out = []
    for raw in lines:
        if is_blank(raw):
            continue
        try:
            out.append(get_text(parse_line(raw), field))
        except BadLine as e:
            return e
        except RecursionError as e:
            return e
    return out


def random_string(rng: random.Random, n: int) -> str:
    chars = CHARS + ["\ud800", "\udfff"] if rng.random() < 0.05 else CHARS  # sometimes a lone surrogate
    return "".join(rng.choice(chars) for _ in range(rng.randint(0, n)))


def random_value(rng: random.Random, depth: int = 0):
    k = rng.randrange(9 if depth < 3 else 6)
    if k == 0:
        return random_string(rng, 8)
    if k == 1:
        return rng.randint(-(10**20), 10**20)
    if k == 2:
        return rng.uniform(-1e6, 1e6)
    if k == 3:
        return rng.choice([True, False, None])
    if k == 4:
        return rng.choice([float("nan"), float("inf"), 1e300, -0.0, 0])
    if k == 5:
        return ""
    if k == 6:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {random_string(rng, 4): random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def random_line(rng: random.Random) -> bytes:
    obj = {random_string(rng, 3): random_value(rng) for _ in range(rng.randint(0, 3))}
    if rng.random() < 0.8:
        obj["text"] = random_string(rng, 30) if rng.random() < 0.8 else random_value(rng)
    if rng.random() < 0.1:
        obj = random_value(rng)
    line = json.dumps(obj, ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, None, 1]))
    if rng.random() < 0.1:  # a duplicate key: json.loads keeps the last one
        line = line.replace("{", '{"text": "first", ', 1) if line.startswith("{") else line
    data = line.replace("\n", rng.choice(["\n", " ", "\t"])).encode("utf-8", "surrogatepass")
    return data + rng.choice([b"\n", b"\r\n", b"", b"  \n"])


def mutate(rng: random.Random, line: bytes) -> bytes:
    k = rng.randrange(6)
    i = rng.randrange(len(line) + 1)
    if k == 0:
        return line[:i]
    if k == 1:
        return line[:i] + bytes([rng.randrange(256)]) + line[i + 1 :]
    if k == 2:
        return line[:i] + rng.choice([b",", b"}", b'"', b"\\", b"\\u", b"\\ud800", b"NaN", b" ", b"\x00"]) + line[i:]
    if k == 3:
        return line[:i] + line[i + 1 :]
    if k == 4:
        return b"\xef\xbb\xbf" + line
    return line.replace(b"text", b"Text", 1)


def check(lines: list[bytes], field: str = "text"):
    got, want = _C.jsonl_texts(lines, field), python_texts(lines, field)
    if got is not None:
        assert not isinstance(want, BaseException), (lines, want)
        assert got == want, lines
    return got


def test_corpus_lines_take_the_native_path(corpus_jsonl):
    with open(corpus_jsonl, "rb") as f:
        lines = f.readlines()
    assert check(lines) is not None


def test_corners():
    cases = [
        (b'{"text": "a"}', ["a"]),
        (b'  {"text" : "a\\u00e9\\ud83d\\ude00\\n\\t\\"\\\\\\/"}  \r\n', ['a\u00e9\U0001f600\n\t"\\/']),
        (b'{"id": [1, {"x": [true, false, null, -0.5e+3]}], "text": "b"}', ["b"]),
        (b'{"text": "first", "text": "second"}', ["second"]),
        (b'{"t\\u0065xt": "escaped key"}', ["escaped key"]),
        (b"   \t\n", []),
        (b'{"text": "\xe6\x97\xa5"}', ["\u65e5"]),
    ]
    for line, want in cases:
        assert _C.jsonl_texts([line], "text") == want, line
    gives_up = [
        b'{"text": "a", "x": NaN}',  # Python accepts NaN
        b'{"text": "\\ud800"}',  # a lone surrogate: Python keeps it
        b'{"text": "\\udc00x"}',
        b'{"text": "   "}',  # empty after strip: the reader's error
        b'{"text": "\\u3000\\u00a0"}',
        b'{"text": ""}',
        b'{"text": 5}',
        b'{"other": "a"}',
        b'["text"]',
        b'{"text": "a",}',
        b'{"text": "a"} x',
        b'{"text": "a\x01"}',
        b'{"text": "\xff"}',
        b'{"text": "\xed\xa0\x80"}',  # an encoded surrogate: invalid UTF-8 for Python
        b'{"text": "\xc0\xaf"}',  # overlong
        b"\xef\xbb\xbf" + b'{"text": "a"}',  # a BOM inside the file: the reader's error
        b'{"x": ' + b"[" * 100 + b"]" * 100 + b', "text": "deep"}',
        b'{"text": "a"}\x0b',
        b'{"text": 01}',
        b'{"text": "a", "n": 1.}',
    ]
    for line in gives_up:
        assert _C.jsonl_texts([b'{"text": "fine"}', line], "text") is None, line
        check([line])


def test_random_and_mutated_lines_agree_with_the_python_reader():
    rng = random.Random(1234)
    native = 0
    for _ in range(3000):
        line = random_line(rng)
        for candidate in (line, mutate(rng, line), mutate(rng, mutate(rng, line))):
            native += check([candidate]) is not None
    assert native > 1500  # most valid lines take the native path


@pytest.mark.parametrize("field", ["text", "content", "t\u00e9xt"])
def test_other_fields(field):
    line = json.dumps({"text": "no", field: "yes", "z": 1}, ensure_ascii=False).encode()
    assert _C.jsonl_texts([line], field) == ["yes"]


def test_type_errors():
    with pytest.raises(TypeError):
        _C.jsonl_texts(["a str"], "text")
