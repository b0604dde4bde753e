"""linear_cross_entropy: fastloss (the chunked C++ op, within its memory budget) against torch's
linear_cross_entropy on both its paths (options=None: whole logits; options given: torch's chunked path),
and on CUDA against Liger-Kernel's and cut-cross-entropy's fused linear cross-entropy (each when
importable) and the three GEMMs alone.

    python benchmarks/bench_linear_cross_entropy.py                 # CPU cases (fp32, bf16)
    python benchmarks/bench_linear_cross_entropy.py --device cuda   # bf16 N=8192, H=4096, V=128256
    python benchmarks/bench_linear_cross_entropy.py --quick         # smaller CPU sizes

Forward+backward per call (median). Peak memory: CPU -- each (case, implementation) runs in its own
subprocess, which reports its peak resident memory (VmHWM) minus the resident memory once the inputs and
gradient buffers exist; CUDA -- torch.cuda.max_memory_allocated minus the allocation before the call
(inputs; the gradients' own size is printed alongside). Timing lives here, never in a test.
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

CPU_CASES = [(4096, 512, 32000, "float32"), (4096, 512, 32000, "bfloat16")]
QUICK_CASES = [(1024, 256, 8192, "float32"), (1024, 256, 8192, "bfloat16")]
GPU_CASES = [(8192, 4096, 128256, "bfloat16")]
IMPLS_CPU = ["fastloss", "torch", "torch_chunked"]
IMPLS_GPU = ["fastloss", "torch_chunked", "liger", "cce", "gemms"]


def vm_kb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    return 0


def make(N, H, V, dtype, device):
    g = torch.Generator(device="cpu").manual_seed(0)
    x = (torch.randn(N, H, generator=g) / 2).to(device, dtype).requires_grad_()
    w = (torch.randn(V, H, generator=g) / H ** 0.5).to(device, dtype).requires_grad_()
    t = torch.randint(0, V, (N,), generator=g).to(device)
    return x, w, t


def step_fn(name, x, w, t):
    """One forward+backward of `name`; None when the implementation is not available."""
    import fastloss

    if name == "fastloss":
        return lambda: fastloss.functional.linear_cross_entropy(x, w, t).backward()
    if name == "torch":
        return lambda: F.linear_cross_entropy(x, w, t).backward()
    if name == "torch_chunked":
        opts = torch.nn.LinearCrossEntropyOptions()
        return lambda: F.linear_cross_entropy(x, w, t, options=opts).backward()
    if name == "liger":
        try:
            from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss
        except Exception:  # noqa: BLE001
            return None
        loss = LigerFusedLinearCrossEntropyLoss()
        return lambda: loss(w, x, t).backward()
    if name == "cce":
        try:
            from cut_cross_entropy import linear_cross_entropy as cce
        except Exception:  # noqa: BLE001
            return None
        return lambda: cce(x, w, t).backward()
    if name == "gemms":  # the three GEMMs alone: logits, d/dinput, d/dweight (a preallocated logits-sized g)
        g = torch.empty(x.shape[0], w.shape[0], dtype=x.dtype, device=x.device)
        xd, wd = x.detach(), w.detach()

        def gemms():
            torch.mm(xd, wd.t(), out=g)
            torch.mm(g, wd)
            torch.mm(g.t(), xd)
        return gemms
    raise ValueError(name)


def run_one(N, H, V, dtype, device, name, reps):
    dt = getattr(torch, dtype)
    x, w, t = make(N, H, V, dt, device)
    fn = step_fn(name, x, w, t)
    if fn is None:
        return {"skipped": True}
    x.grad, w.grad = torch.zeros_like(x), torch.zeros_like(w)  # the gradients exist before the call
    grad_bytes = (x.numel() * x.element_size() + w.numel() * w.element_size())
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = vm_kb("VmRSS:") * 1024
    times = []
    for i in range(reps + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        if i:  # the first call warms up
            times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() if device == "cuda" else vm_kb("VmHWM:") * 1024) - base
    times.sort()
    return {"ms": 1e3 * times[len(times) // 2], "peak_extra_mib": peak / 2 ** 20, "grads_mib": grad_bytes / 2 ** 20}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: N,H,V,dtype,impl in this process
    a = ap.parse_args()
    if a.one:
        N, H, V, dtype, name = a.one.split(",")
        print(json.dumps(run_one(int(N), int(H), int(V), dtype, a.device, name, a.reps)))
        return
    cases = GPU_CASES if a.device == "cuda" else QUICK_CASES if a.quick else CPU_CASES
    names = IMPLS_GPU if a.device == "cuda" else IMPLS_CPU
    print(f"# linear_cross_entropy forward+backward, {a.device}, torch {torch.__version__}, "
          f"{datetime.date.today()}, threads {torch.get_num_threads()}, median of {a.reps}")
    for N, H, V, dtype in cases:
        res = {}
        for name in names:
            cmd = [sys.executable, __file__, "--device", a.device, "--reps", str(a.reps),
                   "--one", f"{N},{H},{V},{dtype},{name}"]
            out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
            try:
                res[name] = json.loads(out.stdout.strip().splitlines()[-1])
            except Exception:  # noqa: BLE001
                res[name] = {"error": (out.stderr.strip().splitlines() or ["?"])[-1]}
        print(f"\nN={N} H={H} V={V} {dtype}")
        print("| impl | ms | peak extra MiB | vs fastloss time |")
        print("|---|---|---|---|")
        base = res["fastloss"].get("ms")
        for name, r in res.items():
            if "ms" in r:
                ratio = f"{r['ms'] / base:.2f}x" if base else "-"
                print(f"| {name} | {r['ms']:.1f} | {r['peak_extra_mib']:.0f} | {ratio} |")
            else:
                print(f"| {name} | {'skipped' if r.get('skipped') else r.get('error')} | | |")
        if "gemms" in res and "ms" in res["gemms"] and base:
            print(f"fastloss / three GEMMs alone: {base / res['gemms']['ms']:.2f}x")


if __name__ == "__main__":
    main()
