"""``python -m r2p1d_ext ...``: the ``r2p1d`` command."""
import sys

from .cli import main

sys.exit(main())
