"""``python -m hyperloss.metrics``: the ``hyperloss-metrics`` command line."""

import sys

from .cli import main

sys.exit(main())
