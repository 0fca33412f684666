"""``python -m ops.cli``: the same entry point as the ``tradeflow`` script."""

import sys

from ops.cli.main import main

sys.exit(main())
