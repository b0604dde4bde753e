"""`python -m fastloss.bench`: fastloss vs torch eager, forward + backward, on the current device.

Prints one table: median time of each, the speed-up, and on CUDA the bandwidth fastloss reaches
counting the minimal bytes (inputs read once, gradient written once) and its fraction of the
device's measured copy bandwidth. benchmarks/ holds the fuller comparisons (torch.compile, peers).
"""
import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import fastloss

DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


# --------------------------------------------------------------------------------------- timing
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn, device, repeats=20, warmup=3):
    """Median seconds of fn() (CUDA: events around each call; CPU: wall clock)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(device, nbytes=1 << 30):
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written."""
    a = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    b = torch.empty_like(a)
    t = timeit(lambda: b.copy_(a), device, repeats=20)
    return 2 * nbytes / t


def peak_extra_memory(fn, device):
    """Bytes allocated above the starting point while fn() runs (CUDA only)."""
    if device.type != "cuda":
        return None
    fn()
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device) - base


# ---------------------------------------------------------------------------------------- cases
class Case:
    """One loss at one size: inputs, the minimal bytes of forward + backward, and the two calls."""

    def __init__(self, loss, rows, classes, dtype, device, weight=False, ignore_frac=0.0, label_smoothing=0.0):
        self.loss, self.rows, self.classes, self.dtype, self.device = loss, rows, classes, dtype, device
        self.weight, self.ignore_frac, self.label_smoothing = weight, ignore_frac, label_smoothing

    def name(self):
        extra = "".join([" w" if self.weight else "", f" ign{self.ignore_frac:g}" if self.ignore_frac else "",
                         f" ls{self.label_smoothing:g}" if self.label_smoothing else ""])
        return f"{self.loss} {DTYPE_NAMES[self.dtype]} {self.rows}x{self.classes}{extra}"

    def inputs(self):
        g = torch.Generator(device=self.device).manual_seed(0)
        x = torch.randn(self.rows, self.classes, device=self.device, dtype=self.dtype, generator=g)
        if self.loss == "nll_loss":
            x = x.float().log_softmax(1).to(self.dtype)
        t = torch.randint(0, self.classes, (self.rows,), device=self.device, generator=g)
        if self.ignore_frac:
            t[torch.rand(self.rows, device=self.device, generator=g) < self.ignore_frac] = -100
        w = torch.rand(self.classes, device=self.device, dtype=self.dtype, generator=g) if self.weight else None
        return x.requires_grad_(), t, w

    def min_bytes(self):
        """Logits read once + gradient written once + targets (+ weights)."""
        e = torch.finfo(self.dtype).bits // 8
        return self.rows * self.classes * 2 * e + self.rows * 8 + (self.classes * e if self.weight else 0)

    def step(self, impl, x, t, w):
        kwargs = {"weight": w}
        if self.loss == "cross_entropy":
            kwargs["label_smoothing"] = self.label_smoothing
        fn = getattr(fastloss.functional if impl == "fastloss" else F, self.loss)

        def run():
            x.grad = None
            fn(x, t, **kwargs).backward()

        return run


def default_cases(device):
    if device.type == "cuda":
        return [
            Case("cross_entropy", 8192, 128256, torch.bfloat16, device),
            Case("cross_entropy", 16384, 32000, torch.float32, device),
            Case("cross_entropy", 8192, 128256, torch.bfloat16, device, weight=True, ignore_frac=0.1,
                 label_smoothing=0.1),
            Case("cross_entropy", 32768, 50257, torch.bfloat16, device),
            Case("cross_entropy", 65536, 128, torch.float32, device),
            Case("nll_loss", 16384, 32000, torch.float32, device),
        ]
    return [
        Case("cross_entropy", 1024, 32000, torch.float32, device),
        Case("cross_entropy", 1024, 32000, torch.float32, device, weight=True, ignore_frac=0.1, label_smoothing=0.1),
        Case("cross_entropy", 256, 32000, torch.bfloat16, device),
        Case("cross_entropy", 8192, 100, torch.float32, device),
        Case("nll_loss", 1024, 32000, torch.float32, device),
    ]


def run_cases(cases, repeats, out=sys.stdout, progress=True):
    device = cases[0].device
    bw = copy_bandwidth(device) if device.type == "cuda" else None
    rows = []
    for i, case in enumerate(cases):
        if progress:
            print(f"\r[{i + 1}/{len(cases)}] {case.name()} ...".ljust(70), end="", file=sys.stderr, flush=True)
        x, t, w = case.inputs()
        res = {"case": case.name()}
        for impl in ["fastloss", "torch"]:
            res[impl] = timeit(case.step(impl, x, t, w), device, repeats=repeats)
        res["speedup"] = res["torch"] / res["fastloss"]
        if bw:
            res["gbps"] = case.min_bytes() / res["fastloss"] / 1e9
            res["bw_frac"] = case.min_bytes() / res["fastloss"] / bw
        rows.append(res)
        del x, t, w
    if progress:
        print("\r".ljust(72) + "\r", end="", file=sys.stderr, flush=True)
    return rows, bw


def format_table(rows, bw, device):
    head = "| case | fastloss ms | torch ms | speed-up |"
    sep = "|---|---:|---:|---:|"
    if bw:
        head += " fastloss GB/s | of copy BW |"
        sep += "---:|---:|"
    lines = [head, sep]
    for r in rows:
        line = f"| {r['case']} | {r['fastloss'] * 1e3:.3f} | {r['torch'] * 1e3:.3f} | {r['speedup']:.2f}x |"
        if bw:
            line += f" {r['gbps']:.0f} | {100 * r['bw_frac']:.0f}% |"
        lines.append(line)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    threads = "" if device.type == "cuda" else f", {torch.get_num_threads()} threads"
    lines.append("")
    lines.append(f"forward+backward, median; device: {name}{threads}; torch {torch.__version__}"
                 + (f"; measured copy bandwidth {bw / 1e9:.0f} GB/s (read+write)" if bw else ""))
    return "\n".join(lines)


def parse_shape(s):
    r, c = s.lower().split("x")
    return int(r), int(c)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m fastloss.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--loss", help="comma-separated: cross_entropy,nll_loss (default: the built-in cases)")
    ap.add_argument("--shape", help="ROWSxCLASSES, e.g. 8192x128256")
    ap.add_argument("--dtype", choices=list(DTYPES), help="fp64, fp32, bf16 or fp16")
    ap.add_argument("--repeats", type=int, default=None, help="timed repetitions (median is reported)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not fastloss.cuda_built():
        ap.error("this fastloss build has no CUDA kernels")
    if args.loss or args.shape or args.dtype:
        losses = (args.loss or "cross_entropy").split(",")
        rows, classes = parse_shape(args.shape) if args.shape else (
            (8192, 32000) if device.type == "cuda" else (1024, 32000))
        dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
        cases = [Case(l, rows, classes, dtype, device) for l in losses]
    else:
        cases = default_cases(device)
    repeats = args.repeats or (20 if device.type == "cuda" else 5)
    rows, bw = run_cases(cases, repeats)
    print(format_table(rows, bw, device))


if __name__ == "__main__":
    main()
