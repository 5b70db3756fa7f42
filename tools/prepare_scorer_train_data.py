#!/usr/bin/env python3
"""prepare_scorer_train_data: normalised LQS scores, proxy sequences re-tokenized for the
scorer, a train/valid split and a plot (the original `prepare_lqs_data_scorer_train_data.sh`).
Thin wrapper of `lqs prepare-scorer-data`.

    tools/prepare_scorer_train_data.py --proxy data/proxy --scores annotate/scores.npy --out scorer_data \\
        --src-tokenizer MISTRAL_TOK --dst-tokenizer SCORER_TOK
"""

import sys

from lqs_megatron.cli import main

sys.exit(main(["prepare-scorer-data", *sys.argv[1:]]))
