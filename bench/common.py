"""The bench/ scripts' shared helpers: the package's (r2p1d_ext/tools/timing.py, also
behind `r2p1d bench`) and the repository's results folder."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from r2p1d_ext.tools.timing import (add_run_options, commit, configure, cpu_name, device_name,  # noqa: E402,F401
                                    eval_step, peak_in_child, pyplot, resident_growth_mb, save, save_figure,
                                    timer, train_step)

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
