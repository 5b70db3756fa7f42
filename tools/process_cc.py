#!/usr/bin/env python3
"""process_cc: tokenize a raw CommonCrawl jsonl corpus into 1025-token chunks ending at sentence
boundaries (the original `process_cc_lqs.sh`). Thin wrapper of
`lqs tokenize --mode chunk --max-length 1025`: every flag of `lqs tokenize` works, later
flags override these defaults.

    tools/process_cc.py --input 'cc/*.jsonl.zst' --field text --tokenizer TOK --out data/cc --workers 32
"""

import sys

from lqs_megatron.cli import main

sys.exit(main(["tokenize", "--mode", "chunk", "--max-length", "1025", *sys.argv[1:]]))
