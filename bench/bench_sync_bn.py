#!/usr/bin/env python3
"""What synchronized BatchNorm costs per training step (r2p1d_ext/sync_bn.py), with
--world processes on this machine (gloo on the CPU, NCCL on CUDA):

  - the collectives alone: for every BatchNorm of a fused r2plus1d_18 (the 17 blocks' and the
    standalone layers'), the forward all-gather of (count, mean, var) and the backward
    all-reduce of the two gradients, as one training step makes them;
  - a training step of the fused r2plus1d_18 (sum of the logits times a fixed gradient) on
    --batch clips per process, with the BatchNorm layers synchronized and not.

Medians over --repeats after --warmup; every process times, rank 0 reports (the step ends
when every rank's backward has).

    python bench/bench_sync_bn.py                       # 2 processes, CPU, 1 clip of 8x112x112 each
    python bench/bench_sync_bn.py --world 2 --batch 2 --clip-len 4 --crop 56
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from common import RESULTS, commit, cpu_name, save  # noqa: E402


def _median(fn, warmup, repeats):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        dist.barrier()
        t0 = time.perf_counter()
        fn()
        dist.barrier()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _worker(rank, args, init, out):
    from r2p1d_ext import sync_bn
    from r2p1d_ext.models import build_model

    torch.set_num_threads(args.threads)
    device = torch.device(args.device, rank if args.device == "cuda" else 0)
    dist.init_process_group("nccl" if args.device == "cuda" else "gloo", init_method=f"file://{init}",
                            rank=rank, world_size=args.world)
    torch.manual_seed(0)
    plain = build_model("r2plus1d_18", 400).to(device).train()
    synced = (nn.SyncBatchNorm.convert_sync_batchnorm if args.device == "cuda"
              else sync_bn.convert_sync_batchnorm)(build_model("r2plus1d_18", 400).to(device).train())
    channels = [m.num_features for m in synced.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    group = dist.group.WORLD

    def collectives():
        for c in channels:
            mean = torch.zeros(c, device=device, requires_grad=True)
            var = torch.ones(c, device=device, requires_grad=True)
            m, v, _ = sync_bn.merge_batch_stats(mean, var, 100, group)
            (m.sum() + v.sum()).backward()

    x = torch.randn(args.batch, 3, args.clip_len, args.crop, args.crop, device=device)
    g = torch.randn(args.batch, 400, device=device)

    def step(model):
        def run():
            model.zero_grad(set_to_none=True)
            (model(x) * g).sum().backward()
        return run

    result = {"collectives_s": _median(collectives, args.warmup, args.repeats), "layers": len(channels),
              "channels": sum(channels)}
    result["step_synced_s"] = _median(step(synced), args.warmup, args.repeats)
    result["step_plain_s"] = _median(step(plain), args.warmup, args.repeats)
    if rank == 0:
        torch.save(result, out)
    dist.destroy_process_group()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch", type=int, default=1, help="clips per process")
    p.add_argument("--clip-len", type=int, default=8)
    p.add_argument("--crop", type=int, default=112)
    p.add_argument("--threads", type=int, default=1, help="CPU threads per process")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None, help="JSON path (default bench/results/<date>-sync-bn-<device>.json)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.pt")
        mp.spawn(_worker, args=(args, os.path.join(tmp, "init"), out), nprocs=args.world)
        r = torch.load(out, weights_only=True)
    r.update(world=args.world, device=args.device, machine=cpu_name(), torch=torch.__version__, commit=commit(),
             batch=args.batch, clip_len=args.clip_len, crop=args.crop, threads=args.threads,
             command=" ".join(["bench/bench_sync_bn.py"] + (argv if argv is not None else sys.argv[1:])))
    r["step_overhead"] = r["step_synced_s"] / r["step_plain_s"] - 1
    print(f"{r['layers']} BatchNorm layers ({r['channels']} channels), {args.world} processes on {args.device}: "
          f"collectives {1e3 * r['collectives_s']:.1f} ms per step; training step {r['step_plain_s']:.3f} s "
          f"plain, {r['step_synced_s']:.3f} s synchronized ({100 * r['step_overhead']:+.1f}%)")
    import datetime
    path = args.out or os.path.join(RESULTS, f"{datetime.date.today().isoformat()}-sync-bn-{args.device}.json")
    save(r, path)
    return r


if __name__ == "__main__":
    main()
