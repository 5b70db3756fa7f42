import sys

from lqs_megatron.cli import main

sys.exit(main())
