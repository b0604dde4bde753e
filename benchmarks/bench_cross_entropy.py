"""cross_entropy side by side: fastloss, torch eager, torch.compile and (when importable) Liger-Kernel.

    python benchmarks/bench_cross_entropy.py [--device cuda] [--quick] [--no-compile] [--out FILE]

For each case: forward+backward and forward-only medians, the speed-up over torch eager, the
bandwidth fastloss reaches counting the minimal bytes (logits read once, gradient written once)
as a fraction of the measured device copy bandwidth, and the peak extra memory of forward+backward.
Timing lives here, never in a test.
"""
import argparse
import datetime
import sys

import torch
import torch.nn.functional as F

import fastloss
from fastloss.bench import Case, copy_bandwidth, peak_extra_memory, sync, timeit

try:  # peer library, optional
    from liger_kernel.transformers.cross_entropy import LigerCrossEntropyLoss
except Exception as e:  # noqa: BLE001 - any import failure means "not available"
    print(f"liger-kernel not importable: {type(e).__name__}: {e}", file=sys.stderr)
    LigerCrossEntropyLoss = None


def impls(case, compile_ok):
    kw = {"label_smoothing": case.label_smoothing}
    out = {
        "fastloss": lambda x, t, w: fastloss.functional.cross_entropy(x, t, weight=w, **kw),
        "torch": lambda x, t, w: F.cross_entropy(x, t, weight=w, **kw),
    }
    if compile_ok:
        torch._dynamo.reset()  # else the 2nd and 3rd cases recompile the same lambda with dynamic shapes
        compiled = torch.compile(lambda x, t, w: F.cross_entropy(x, t, weight=w, **kw), fullgraph=True, dynamic=False)
        out["torch.compile"] = compiled
    if LigerCrossEntropyLoss is not None and case.device.type == "cuda":
        def liger(x, t, w):
            return LigerCrossEntropyLoss(weight=w, label_smoothing=case.label_smoothing)(x, t)
        out["liger"] = liger
    return out


def fwd_bwd(fn, x, t, w):
    def run():
        x.grad = None
        fn(x, t, w).backward()
    return run


def fwd_only(fn, x, t, w):
    def run():
        with torch.no_grad():
            fn(x, t, w)
    return run


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="fewer cases and repeats")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--out", help="also write the markdown here")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda":
        cases = [
            Case("cross_entropy", 8192, 128256, torch.bfloat16, dev),
            Case("cross_entropy", 16384, 32000, torch.float32, dev),
            Case("cross_entropy", 8192, 128256, torch.bfloat16, dev, weight=True, ignore_frac=0.1,
                 label_smoothing=0.1),
            Case("cross_entropy", 4096, 151936, torch.bfloat16, dev),
            Case("cross_entropy", 32768, 50257, torch.bfloat16, dev),
            Case("cross_entropy", 16384, 32000, torch.float16, dev),
            Case("cross_entropy", 65536, 1000, torch.float32, dev),
            Case("cross_entropy", 262144, 128, torch.bfloat16, dev),
        ]
        repeats = args.repeats or (10 if args.quick else 30)
    else:
        cases = [Case("cross_entropy", 1024, 32000, torch.float32, dev),
                 Case("cross_entropy", 1024, 32000, torch.float32, dev, weight=True, ignore_frac=0.1,
                      label_smoothing=0.1),
                 Case("cross_entropy", 256, 32000, torch.bfloat16, dev)]
        repeats = 3 if args.quick else 7
    if args.quick:
        cases = cases[:3]
    bw = copy_bandwidth(dev) if dev.type == "cuda" else None
    lines = []
    for i, case in enumerate(cases):
        compile_ok = not args.no_compile and i < 3  # compile time is long: the headline cases only
        x, t, w = case.inputs()
        res = {}
        for name, fn in impls(case, compile_ok).items():
            print(f"\r[{i + 1}/{len(cases)}] {case.name()} {name} ...".ljust(80), end="", file=sys.stderr, flush=True)
            try:
                fb = timeit(fwd_bwd(fn, x, t, w), dev, repeats=repeats)
                fo = timeit(fwd_only(fn, x, t, w), dev, repeats=repeats)
                mem = peak_extra_memory(fwd_bwd(fn, x, t, w), dev)
                res[name] = (fb, fo, mem)
            except Exception as e:  # noqa: BLE001 - a peer failing is reported, not fatal
                res[name] = (float("nan"), float("nan"), None)
                print(f"\n  {name} failed: {type(e).__name__}: {str(e)[:200]}", file=sys.stderr)
            sync(dev)
        base = res["torch"][0]
        for name, (fb, fo, mem) in res.items():
            row = f"| {case.name()} | {name} | {fb * 1e3:.3f} | {fo * 1e3:.3f} | {base / fb:.2f}x |"
            if bw:
                row += f" {case.min_bytes() / fb / 1e9:.0f} | {100 * case.min_bytes() / fb / bw:.0f}% |"
                row += f" {mem / 2**20:.0f} |" if mem is not None else " - |"
            lines.append(row)
        del x, t, w
    print("\r".ljust(82) + "\r", end="", file=sys.stderr)
    head = "| case | impl | fwd+bwd ms | fwd ms | fwd+bwd vs torch |"
    sep = "|---|---|---:|---:|---:|"
    if bw:
        head += " GB/s (min bytes) | of copy BW | peak extra MiB |"
        sep += "---:|---:|---:|"
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    foot = (f"\n{name}; torch {torch.__version__}; "
            f"{'liger-kernel present' if LigerCrossEntropyLoss else 'liger-kernel not installed'}; "
            f"{datetime.date.today().isoformat()}"
            + (f"; copy bandwidth {bw / 1e9:.0f} GB/s (read+write)" if bw else ""))
    text = "\n".join([head, sep] + lines) + "\n" + foot
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
