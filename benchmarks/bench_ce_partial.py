"""The fused partial cross-entropy steps (ce_partial_stats, ce_partial_grad_) against the same steps composed
of ATen ops (the reference they replaced) and torch's cross_entropy forward+backward on the same logits.

    python benchmarks/bench_ce_partial.py [--device cuda] [--rows 4096] [--classes 32000] [--repeats 5]

Bytes counted (the minimum each op must move): stats reads the logits once (R*Cs*size) and writes
R*5 accumulate values; grad_ reads and writes the logits once (2*R*Cs*size); torch's fwd+bwd is counted
as grad_ + stats (logits read twice, gradient written once).
Timing lives here, never in a test.
"""
import argparse

import torch
import torch.nn.functional as F

import fastloss  # noqa: F401
from fastloss.bench import compare

ops = torch.ops.fastloss


def stats_aten(x, t):
    """ce_partial_stats of one whole-row slice, class targets, no weight/smoothing/cap, in ATen ops."""
    z = x.float()
    m = z.max(1).values
    s = torch.exp(z - m[:, None]).sum(1)
    zt = z.gather(1, t[:, None])[:, 0]
    return torch.stack([m, s, zt, torch.ones_like(m), torch.zeros_like(m)], 1)


def grad_aten_(x, t, k):
    z = x.float()
    g = torch.exp(z - k[:, :1]) * k[:, 1:2] - k[:, 2:3]
    g.scatter_add_(1, t[:, None], -k[:, 3:4])
    x.copy_(g)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--classes", type=int, default=32000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    a = ap.parse_args()
    dev = torch.device(a.device)
    R, C = a.rows, a.classes
    print(f"device {dev}, threads {torch.get_num_threads()}, R={R} Cs={C}")
    for name in a.dtypes.split(","):
        dtype = getattr(torch, name)
        g = torch.Generator(device=dev).manual_seed(0)
        x = (torch.randn(R, C, generator=g, device=dev) * 3).to(dtype)
        t = torch.randint(0, C, (R,), generator=g, device=dev)
        st = ops.ce_partial_stats(x, t, None, 0, C, -100, 0.0, None)
        W = torch.tensor(float(C), device=dev)
        _, _, coef = ops.ce_partial_finish(st, t, W, C, -100, 0.0, 0.0)
        one = torch.ones((), device=dev)
        k = ops.ce_partial_grad_coef(coef, one / R, one)
        buf = x.clone()
        xg = x.clone().requires_grad_()

        def torch_fb():
            xg.grad = None
            F.cross_entropy(xg, t).backward()

        fns = {
            "stats fused": lambda: ops.ce_partial_stats(x, t, None, 0, C, -100, 0.0, None),
            "stats aten": lambda: stats_aten(x, t),
            # grad_ overwrites its input: time it on a copy refreshed outside the timed call is not possible,
            # so it runs on `buf` repeatedly (values change, the work does not: same exp count, same bytes)
            "grad_ fused": lambda: ops.ce_partial_grad_(buf, t, None, k, 0, -100, None),
            "grad_ aten": lambda: grad_aten_(buf, t, k),
            "torch CE fwd+bwd": torch_fb,
        }
        times = compare(fns, dev, repeats=a.repeats, warmup=1)
        sz = x.element_size()
        nbytes = {
            "stats fused": R * C * sz, "stats aten": R * C * sz,
            "grad_ fused": 2 * R * C * sz, "grad_ aten": 2 * R * C * sz,
            "torch CE fwd+bwd": 3 * R * C * sz,
        }
        print(f"-- {name}")
        for n, s in times.items():
            print(f"  {n:18s} {s * 1e3:9.2f} ms  {nbytes[n] / s / 1e9:6.2f} GB/s (min bytes {nbytes[n] / 1e6:.0f} MB)")
        fused = times["stats fused"] + times["grad_ fused"]
        print(f"  stats+grad_ fused {fused * 1e3:9.2f} ms vs torch CE fwd+bwd {times['torch CE fwd+bwd'] * 1e3:.2f} ms"
              f" ({times['torch CE fwd+bwd'] / fused:.2f}x)")


if __name__ == "__main__":
    main()
