"""Where the R2M attention op spends its device time at the target shape of
docs/attention.md#speed-targets (torch.profiler).

    python3 bench/profile_attention.py [--batch 512]

Prints the CUDA kernels of one forward, one forward+backward and one r2m_reward call, sorted by
device time, so the time outside the states-reading kernel (projections, launcher glue) shows.
"""
import argparse
import random

import torch
from torch.profiler import ProfilerActivity, profile

from icrm_kernels.benchmarks.attention import _Problem


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=512)
    args = ap.parse_args()
    rng = random.Random(0)
    lens = [rng.randint(512, 1535) for _ in range(args.batch)]
    p = _Problem(torch.device("cuda"), torch.bfloat16, lens, 4096, 4096, 2048, 1)
    p.query.requires_grad_(True)
    fwd_bwd = p.fwd_bwd(p.icrm_fwd, [p.query] + list(p.mod.parameters()))
    for name, fn in (("fwd", p.icrm_fwd), ("fwd+bwd", fwd_bwd), ("r2m_reward", p.icrm_reward)):
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            fn()
            torch.cuda.synchronize()
        print(f"==== {name}")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))


if __name__ == "__main__":
    main()
