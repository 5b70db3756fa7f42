#!/usr/bin/env python3
"""sample_proxy_data: a seeded uniform proxy sample of the corpus, the examples that get LQS
scores (the original `sample_proxy_data.sh`; the papers use 163,840 examples). Thin wrapper of
`lqs sample-proxy`; also writes PREFIX.indices.npy.

    tools/sample_proxy_data.py --data data/cc --num 163840 --seed 42 --out data/proxy
"""

import sys

from lqs_megatron.cli import main

sys.exit(main(["sample-proxy", *sys.argv[1:]]))
