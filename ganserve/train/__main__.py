"""`python -m ganserve.train [flags]`: the same as `ganserve train [flags]`.

Owns nothing but the entry point; see ganserve.train.cli.
"""

import sys

from ganserve.train.cli import main

sys.exit(main())
