#!/usr/bin/env python3
"""bin2jsonl: a scored indexed dataset to jsonl with the decoded text, its score and its corpus
index (the original `scorerd_data_bin2json`). Thin wrapper of `lqs export-jsonl`.

    tools/bin2jsonl.py --data data/cc --tokenizer TOK --scores scores/scores.npy --out cc_scored.jsonl
"""

import sys

from lqs_megatron.cli import main

sys.exit(main(["export-jsonl", *sys.argv[1:]]))
