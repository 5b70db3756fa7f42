"""Degraded copies of clean text: the kinds of noise a web crawl is full of.

Each function takes a clean document and a seeded :class:`random.Random` and returns
the degraded text; the kinds are the ``kind`` field of the demo corpus:

- ``shuffled``: the document's words in random order (every word kept, no syntax);
- ``junk``: truncated junk: fragments of the document cut at random places (mid-word)
  mixed with random character soup, 30-80% of the source's length;
- ``boilerplate``: a scraped page that is almost all site chrome: navigation bars,
  cookie banners, share buttons and footers repeated, with the document's first line
  as its only content;
- ``spam``: keyword spam: a few of the document's words repeated among SEO filler
  words ("best", "free", "download", ...).

None of them is a useful example of explanatory English; each keeps something of its
source (vocabulary, fragments, a title), as real crawl noise does, so it is not
trivially separable by vocabulary alone.
"""

from __future__ import annotations

import math
import random
import re
import string
from collections.abc import Callable, Mapping
from types import MappingProxyType

_SOUP = string.ascii_letters + string.digits + "#$%&*+/<=>@[]^_{|}~"
_WORD = re.compile(r"[A-Za-z]{4,}")

BOILERPLATE_LINES: tuple[str, ...] = (
    "Home | Docs | Blog | Forum | Contact",
    "Skip to main content",
    "We use cookies to improve your experience. By continuing you agree to our use of cookies. Accept all",
    "Accept cookies | Manage preferences | Reject non-essential",
    "Sign in  Register  Forgot password?",
    "Share on Facebook  Share on Twitter  Share by email",
    "Subscribe to our newsletter and never miss an update!",
    "Previous page | Next page | Back to top",
    "Copyright (c) 2024 All rights reserved. Privacy Policy | Terms of Use | Sitemap",
    "Loading...",
    "Click here to download the PDF version",
    "Related posts: Top 10 tips | Beginner guide | FAQ",
    "Search this site",
    "Advertisement",
    "Follow us on social media",
    "Was this page helpful? Yes No",
)
"""Site-chrome lines of the ``boilerplate`` kind."""

SPAM_WORDS: tuple[str, ...] = (
    "best",
    "free",
    "download",
    "cheap",
    "online",
    "top",
    "tutorial",
    "guide",
    "2024",
    "click",
    "now",
    "deal",
    "review",
    "pdf",
    "easy",
    "fast",
    "official",
    "full",
    "crack",
    "latest",
)
"""Filler words of the ``spam`` kind."""


def shuffled(text: str, rng: random.Random) -> str:
    """Every word of ``text``, in random order, joined by single spaces."""
    words = text.split()
    rng.shuffle(words)
    return " ".join(words)


def junk(text: str, rng: random.Random) -> str:
    """Fragments of ``text`` cut mid-word, mixed with random character soup; 30-80% of its length."""
    target = max(60, int(len(text) * rng.uniform(0.3, 0.8)))
    pieces: list[str] = []
    size = 0
    while size < target:
        if rng.random() < 0.5 and len(text) > 3:
            start = rng.randrange(len(text) - 3)
            piece = text[start : start + rng.randint(3, 12)].replace("\n", " ")
        else:
            piece = "".join(rng.choice(_SOUP) for _ in range(rng.randint(3, 15)))
        sep = rng.choice((" ", " ", "", "\n", " | ", ";"))
        pieces += [piece, sep]
        size += len(piece) + len(sep)
    return "".join(pieces).strip() or "#"


def boilerplate(text: str, rng: random.Random) -> str:
    """Site chrome repeated around the document's first line (its only real content)."""
    title = text.strip().split("\n", 1)[0][:80]
    chrome = rng.sample(BOILERPLATE_LINES, rng.randint(4, 7))
    lines = [chrome[0], chrome[1], title]
    target = max(120, int(len(text) * rng.uniform(0.6, 1.2)))
    size = sum(len(x) + 1 for x in lines)
    while size < target:
        line = rng.choice(chrome)
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines)


def spam(text: str, rng: random.Random) -> str:
    """A few of the document's words repeated among SEO filler words, about as many words as the source."""
    words = sorted({w.lower() for w in _WORD.findall(text)}) or ["python"]
    keywords = rng.sample(words, min(len(words), rng.randint(3, 6)))
    n = max(12, int(len(text.split()) * rng.uniform(0.6, 1.0)))
    out = []
    for _ in range(n):
        out.append(rng.choice(keywords) if rng.random() < 0.6 else rng.choice(SPAM_WORDS))
    # short lines, as spam pages lay them out
    cut = max(1, int(math.sqrt(n)))
    return "\n".join(" ".join(out[i : i + cut * 2]) for i in range(0, n, cut * 2))


DEGRADATIONS: Mapping[str, Callable[[str, random.Random], str]] = MappingProxyType(
    {"shuffled": shuffled, "junk": junk, "boilerplate": boilerplate, "spam": spam}
)
"""Kind name -> ``fn(text, rng) -> degraded text`` (the ``kind`` field of degraded records)."""
