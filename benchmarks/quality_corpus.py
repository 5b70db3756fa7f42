"""The real-text corpus of benchmarks/bench_quality.py, built from Debian documentation packages.

Installed at benchmark time (``apt-get install perl-doc postgresql-doc linux-doc``; nothing
from them is committed), read from the system's own files, deterministic for a seed:

- **target** (LIMA-like conversations): the questions and answers of ``perlfaq1..9``
  (``=head2`` question, the POD body as answer), split at random into the annotation
  target set (``target.jsonl``) and the held-out set every arm is evaluated on
  (``holdout.jsonl``);
- **clean prose** (``kind: clean``): the other Perl manuals (POD), the PostgreSQL manual
  (HTML) and the Linux kernel's Documentation (reStructuredText), cut into documents of
  consecutive paragraphs;
- **lower-value text** (``kind: lower``): section-1 man pages (roff stripped), Debian
  changelogs and the Perl release notes (``perl5*delta``): real, but lists of changes and
  option tables rather than explanation;
- **degraded copies** (``kind: degraded``) of distinct clean documents (their clean source
  stays in the corpus): the words shuffled, or 40% of the words replaced by random words
  of the corpus's vocabulary.

``corpus.jsonl`` lines are ``{"text", "source", "kind"}`` in a seeded random order; ``source``
names the collection (``perl-docs``, ``postgresql-docs``, ``linux-docs``, ``man-pages``,
``debian-changelogs``, ``perl-deltas``, ``shuffled-copies``, ``replaced-copies``).
Run alone: ``python benchmarks/quality_corpus.py --out DIR [--tiny]``.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import html.parser
import json
import os
import random
import re
from pathlib import Path

PACKAGES = ("perl-doc", "postgresql-doc", "linux-doc")

# documents per collection (full size); --tiny divides them by TINY_DIV
SIZES = {
    "perl-docs": 900,
    "postgresql-docs": 900,
    "linux-docs": 900,
    "man-pages": 350,
    "debian-changelogs": 350,
    "perl-deltas": 350,
    "shuffled-copies": 350,
    "replaced-copies": 350,
}
TINY_DIV = 20
MIN_CHARS, MAX_CHARS = 400, 2000
REPLACE_FRACTION = 0.4


def _read(path: str) -> str:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        return f.read()


# -- markup to text --------------------------------------------------------------------

_POD_CODE = re.compile(r"([BICFSLXZE])(<+)\s?(.*?)\s?(>+)", re.S)


def _pod_code(m: re.Match) -> str:
    kind, inner = m.group(1), m.group(3)
    if kind in "XZ":
        return ""
    if kind == "E":
        return {"lt": "<", "gt": ">", "verbar": "|", "sol": "/"}.get(inner, "")
    if kind == "L":
        return inner.split("|")[0].split("/")[-1].strip('"')
    return inner


def pod_text(src: str) -> str:
    """Plain text of a POD document (headings and items kept as lines, formatting codes resolved)."""
    out, skip = [], False
    for block in re.split(r"\n\s*\n", src):
        b = block.strip("\n")
        if b.startswith("=begin"):
            skip = True
            continue
        if b.startswith("=end"):
            skip = False
            continue
        if skip or b.startswith(("=for", "=cut", "=pod", "=encoding", "=over", "=back")):
            continue
        if b.startswith(("=head", "=item")):
            b = b.split(None, 1)[1] if len(b.split(None, 1)) > 1 else ""
        for _ in range(3):
            b = _POD_CODE.sub(_pod_code, b)
        if b.strip():
            out.append(b)
    return "\n\n".join(out)


class _HTMLText(html.parser.HTMLParser):
    BLOCK = {"p", "div", "h1", "h2", "h3", "h4", "li", "pre", "tr", "table", "dt", "dd", "br", "title"}

    def __init__(self):
        super().__init__()
        self.parts, self.skip = [], 0

    def handle_starttag(self, tag, attrs):
        self.skip += tag in ("script", "style", "head")
        if tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_endtag(self, tag):
        self.skip -= tag in ("script", "style", "head") and self.skip > 0
        if tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(data)


def html_text(src: str) -> str:
    p = _HTMLText()
    p.feed(src)
    return re.sub(r"\n{3,}", "\n\n", "".join(p.parts))


def roff_text(src: str) -> str:
    """Rough plain text of a man page: requests dropped, font escapes removed."""
    lines = []
    for line in src.splitlines():
        if line.startswith(('.\\"', "'\\\"")):
            continue
        if line.startswith("."):
            req = line.split(None, 1)
            if req[0] in (".SH", ".SS") and len(req) > 1:
                lines += ["", req[1].strip('"')]
            elif req[0] in (".PP", ".P", ".LP", ".TP", ".IP", ".sp", ".br"):
                lines.append("")
            elif req[0] in (".B", ".I", ".BR", ".IR", ".RB", ".BI") and len(req) > 1:
                lines.append(req[1].replace('"', ""))
            continue
        lines.append(line)
    text = "\n".join(lines)
    text = re.sub(r"\\f[BIRPC(][A-Z]?|\\f\[[A-Z]*\]", "", text)
    text = re.sub(r"\\\(..|\\\[[a-z]+\]|\\[-e&|^ ]", lambda m: "-" if m.group(0) == "\\-" else " ", text)
    return text


# -- documents ------------------------------------------------------------------------


def paragraphs(text: str) -> list[str]:
    return [
        " ".join(p.split()) if not p.startswith((" ", "\t")) else p.strip("\n")
        for p in re.split(r"\n\s*\n", text)
        if len(p.strip()) > 30
    ]


def documents(text: str, rng: random.Random) -> list[str]:
    """Runs of consecutive paragraphs of about ``MIN_CHARS..MAX_CHARS`` characters (log-uniform)."""
    out, cur, goal = [], [], 0.0
    for p in paragraphs(text):
        if not cur:
            goal = MIN_CHARS * (MAX_CHARS / MIN_CHARS) ** rng.random()
        cur.append(p[:MAX_CHARS])
        if sum(len(c) for c in cur) >= goal:
            out.append("\n\n".join(cur))
            cur = []
    if cur and sum(len(c) for c in cur) >= MIN_CHARS:
        out.append("\n\n".join(cur))
    return out


def _collect(paths: list[str], convert, rng: random.Random, want: int, seen: set[str]) -> list[str]:
    """``want`` documents drawn from the files (each file's documents in order, files in a seeded order)."""
    paths = sorted(paths)
    rng.shuffle(paths)
    docs: list[str] = []
    per_file = max(2, want // max(1, len(paths)) + 2)
    for p in paths:
        try:
            new = documents(convert(_read(p)), rng)[:per_file]
        except (OSError, UnicodeError, ValueError):
            continue
        docs += [d for d in new if d not in seen and not seen.add(d)]  # no document twice (files repeat text)
        if len(docs) >= want:
            break
    return docs[:want]


def perlfaq_items() -> list[tuple[str, str]]:
    items = []
    for path in sorted(glob.glob("/usr/share/perl/5*/pod/perlfaq[1-9].pod")):
        src = _read(path)
        for part in re.split(r"\n=head2 ", src)[1:]:
            q, _, body = part.partition("\n")
            q, a = pod_text(q), pod_text(body)
            if len(a) > 200 and q.strip():
                items.append((q.strip(), a.strip()[:3000]))
    return items


def shuffled(text: str, rng: random.Random) -> str:
    words = text.split()
    rng.shuffle(words)
    return " ".join(words)


def replaced(text: str, rng: random.Random, vocab: list[str]) -> str:
    return " ".join(rng.choice(vocab) if rng.random() < REPLACE_FRACTION else w for w in text.split())


def sources() -> dict[str, tuple[list[str], object]]:
    pod = "/usr/share/perl/5*/pod/"
    perl = [p for p in glob.glob(pod + "*.pod") if not re.search(r"perlfaq|perl5\d+delta|perl\d*delta", p)]
    linux = glob.glob("/usr/share/doc/linux-doc/Documentation/**/*.rst.gz", recursive=True)
    return {
        "perl-docs": (perl, pod_text),
        "postgresql-docs": (glob.glob("/usr/share/doc/postgresql-doc-*/html/*.html"), html_text),
        "linux-docs": (linux, lambda s: s),
        "man-pages": (glob.glob("/usr/share/man/man1/*.1.gz"), roff_text),
        "debian-changelogs": (glob.glob("/usr/share/doc/*/changelog.Debian.gz"), lambda s: s),
        "perl-deltas": (glob.glob(pod + "perl5*delta.pod"), pod_text),
    }


def build_corpus(out_dir: str | os.PathLike, tiny: bool = False, seed: int = 0) -> dict:
    """Write ``corpus.jsonl``, ``target.jsonl``, ``holdout.jsonl`` and ``manifest.json`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    sizes = {k: max(8, v // TINY_DIV) if tiny else v for k, v in SIZES.items()}
    missing = [k for k, (paths, _) in sources().items() if not paths]
    if missing:
        raise SystemExit(f"no files for {', '.join(missing)}: run `apt-get install {' '.join(PACKAGES)}` first")
    rows = []
    clean_docs: list[str] = []
    seen: set[str] = set()
    for name, (paths, convert) in sources().items():
        docs = _collect(paths, convert, random.Random(f"{seed}:{name}"), sizes[name], seen)
        kind = "clean" if name.endswith("-docs") else "lower"
        rows += [{"text": d, "source": name, "kind": kind} for d in docs]
        if kind == "clean":
            clean_docs += docs
    vocab = sorted({w for d in clean_docs for w in re.findall(r"[A-Za-z]{3,}", d)})
    picks = rng.sample(range(len(clean_docs)), sizes["shuffled-copies"] + sizes["replaced-copies"])
    for k, i in enumerate(picks):
        if k < sizes["shuffled-copies"]:
            rows.append({"text": shuffled(clean_docs[i], rng), "source": "shuffled-copies", "kind": "degraded"})
        else:
            rows.append({"text": replaced(clean_docs[i], rng, vocab), "source": "replaced-copies", "kind": "degraded"})
    rng.shuffle(rows)
    items = perlfaq_items()
    rng.shuffle(items)
    n_hold = len(items) // 2 if not tiny else min(len(items) // 2, 60)
    n_tgt = len(items) - n_hold if not tiny else min(len(items) - n_hold, 60)
    conv = [{"conversations": [q, a], "source": "perlfaq"} for q, a in items]
    for name, part in (("corpus", rows), ("target", conv[:n_tgt]), ("holdout", conv[n_tgt : n_tgt + n_hold])):
        with open(out / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in part)
    counts = {k: sum(r["source"] == k for r in rows) for k in SIZES}
    manifest = {
        "documents": len(rows),
        "by_source": counts,
        "target": n_tgt,
        "holdout": n_hold,
        "seed": seed,
        "tiny": tiny,
        "chars": sum(len(r["text"]) for r in rows),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--tiny", action="store_true", help=f"1/{TINY_DIV} of the documents (a smoke test)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    print(json.dumps(build_corpus(args.out, args.tiny, args.seed), indent=2))


if __name__ == "__main__":
    main()
