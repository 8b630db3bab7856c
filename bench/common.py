"""The bench/ scripts' shared helpers: the package's (r2p1d_ext/tools/timing.py, also
behind `r2p1d bench`), the repository's results folder, and the front of the scripts that
are thin callers of `r2p1d bench`'s functions."""
import argparse
import datetime
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from r2p1d_ext.tools.timing import (add_run_options, commit, configure, cpu_name, device_name,  # noqa: E402,F401
                                    eval_step, peak_in_child, pyplot, resident_growth_mb, save, save_figure,
                                    timer, train_step)

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def bench_script(doc, argv, defaults, add_options, name, run):
    """The block and network scripts' front: the run options (`defaults`: the help text of
    the warm-up and repeat defaults), the script's own (`add_options(parser)`), --out
    defaulting to bench/results/<date>-<cpu|gpu><name>[-<dtype>].json (the dtype named when
    it is not float32, so a bfloat16 run keeps the float32 one); then run(args, argv)."""
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(p, **defaults)
    add_options(p)
    p.add_argument("--out", default=None, help=f"JSON path (default bench/results/<date>-<device>{name}.json)")
    args = p.parse_args(argv)
    device = "gpu" if args.device == "cuda" else "cpu"
    dtype = getattr(args, "dtype", "float32")
    suffix = "" if dtype == "float32" else f"-{dtype}"
    args.out = args.out or os.path.join(RESULTS, f"{datetime.date.today().isoformat()}-{device}{name}{suffix}.json")
    return run(args, argv)
