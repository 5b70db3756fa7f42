#!/usr/bin/env python3
r"""convert_tokenization: re-tokenize a dataset from the annotation model's tokenizer to the
scorer's (the original `convert_tokenization.sh`). Thin wrapper of `lqs retokenize`.

    tools/convert_tokenization.py --data data/cc --src-tokenizer MISTRAL_TOK --dst-tokenizer SCORER_TOK \
        --out data/cc_scorer
"""

import sys

from lqs_megatron.cli import main

sys.exit(main(["retokenize", *sys.argv[1:]]))
