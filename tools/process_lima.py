#!/usr/bin/env python3
"""process_lima: tokenize LIMA-style conversations, the target set of the annotation (the original
`process_lima_lqs.sh`). Thin wrapper of `lqs tokenize-target --field conversations`.

    tools/process_lima.py --input lima/train.jsonl --tokenizer TOK --out data/lima
"""

import sys

from lqs_megatron.cli import main

sys.exit(main(["tokenize-target", "--field", "conversations", *sys.argv[1:]]))
