"""`python -m fastloss.bench`: fastloss vs torch eager, forward + backward, on the current device.

Prints one table: median time of each, the speed-up, and on CUDA the bandwidth fastloss reaches
counting the minimal bytes (each input read once, each gradient and output written once) and its
fraction of the device's measured copy bandwidth. --json / --csv print the same results as records
for tooling, --plot draws speed-up against size. benchmarks/ holds the fuller comparisons
(forward-only, torch.compile, peers, more sizes and dtypes).

The default cases hold each family's typical shapes with reduction='mean', then reduction='none'
variants: 'none.sum' in a case's name is loss(reduction='none').sum().backward(), 'none' is
loss(reduction='none').backward(g) with a fixed random g (--none-backward picks which).
Progress goes to stderr: rewritten in place on a terminal, one line per case elsewhere (logs).

Examples:
    python -m fastloss.bench                                   # every family's default cases
    python -m fastloss.bench --list                            # the cases, without timing
    python -m fastloss.bench --only 'none'                     # the default cases whose name matches
    python -m fastloss.bench --family pointwise                # cross_entropy|pointwise|embedding|ctc|margin_rows|all
    python -m fastloss.bench --json > bench.json               # records (also --csv); the table is not printed
    python -m fastloss.bench --plot speedup.png --family pointwise    # speed-up vs size, several sizes per loss
    python -m fastloss.bench --loss cross_entropy,nll_loss --shape 8192x128256 --dtype bf16
    python -m fastloss.bench --loss mse,smooth_l1 --shape 64M --dtype fp32 --reduction none
    python -m fastloss.bench --loss triplet_margin_loss --shape 65536x512 --swap
    python -m fastloss.bench --loss ctc_loss --shape 200x16x32x50 --dtype fp32
    python -m fastloss.bench --loss multi_margin,multilabel_margin --shape 4096x1000 --dtype fp32

--shape is ROWSxCLASSES for cross_entropy/nll_loss and multi_margin/multilabel_margin (8 listed classes
per row), NxD for triplet_margin[_with_distance] and cosine_embedding, TxNxCxS (time steps, batch,
classes, padded target length) for ctc_loss, and the input's shape (or element count: 64M, 4194304)
for the elementwise losses (l1, mse, smooth_l1, huber, margin_ranking, hinge_embedding).

Layout: one module per csrc family (cross_entropy.py, pointwise.py, embedding.py, ctc.py, margin_rows.py)
holds its case classes (_case.LossCase: each answers for its inputs, its calls, its minimal bytes, its
name and its default size) and its default_cases(device); each loss's case class is named in its row
of fastloss/_losses.py. This module: the registry from that table, the driver and the command line.
"""
import argparse
import csv
import datetime
import io
import json
import math
import platform
import re
import shutil
import sys

import torch

import fastloss

from .. import _losses
from ._case import DTYPE_NAMES, DTYPES, LossCase, ShapedCase, fmt_count, fmt_shape, parse_shape  # noqa: F401
from ._timing import (compare, copy_bandwidth, fwd_bwd, fwd_only, peak_extra_memory, sync, time_once,  # noqa: F401
                      timeit)
from . import cross_entropy, ctc, embedding, linear_cross_entropy, margin_rows, pointwise
from .cross_entropy import CrossEntropyCase, NllCase  # noqa: F401
from .pointwise import (RegressionCase, SmoothL1Case, HuberCase, SoftMarginCase, KLDivCase,  # noqa: F401
                        SignTargetCase, MarginRankingCase, HingeEmbeddingCase, BinaryCase, BCECase,
                        BCEWithLogitsCase, PoissonCase, GaussianCase, MultiLabelSoftMarginCase)
from .embedding import EmbeddingCase, TripletCase, CosineCase  # noqa: F401
from .ctc import CtcCase  # noqa: F401
from .margin_rows import MarginRowsCase, MultiMarginCase, MultiLabelMarginCase  # noqa: F401
from .linear_cross_entropy import LinearCrossEntropyCase  # noqa: F401

Case = CrossEntropyCase  # the name benchmarks/bench_cross_entropy.py (and older scripts) use


# ------------------------------------------------------------------------- the cases, from the table
# The benchmark's families: the csrc families that have cases, each a module here with its case classes
# and its default_cases(device).
_FAMILY_MODULES = {"cross_entropy": cross_entropy, "pointwise": pointwise, "embedding": embedding, "ctc": ctc,
                   "margin_rows": margin_rows, "linear_cross_entropy": linear_cross_entropy}


def _register():
    """Each loss's case class, as its row in fastloss/_losses.py names it (`bench`), found in its family's
    module: loss -> class, in table order."""
    by_loss = {}
    for row in _losses.LOSSES:
        if row.bench is None:
            continue
        cls = getattr(_FAMILY_MODULES[row.family], row.bench)
        cls.register(row.name, row.family)
        by_loss[row.name] = cls
    return by_loss


LOSS_FAMILY = _register()  # loss -> its case class (the class's .family is the loss's csrc family)
FAMILIES = {f: _FAMILY_MODULES[f] for f in _losses.FAMILIES if f in _FAMILY_MODULES}  # family -> module


def loss_name(s):
    """Accept 'mse' for 'mse_loss', 'triplet_margin' for 'triplet_margin_loss'."""
    s = s.strip()
    if s in LOSS_FAMILY:
        return s
    if s + "_loss" in LOSS_FAMILY:
        return s + "_loss"
    raise ValueError(f"unknown loss {s!r}; known: {', '.join(LOSS_FAMILY)}")


def make_case(loss, shape, dtype, device, reduction="mean", swap=False):
    """A case for any known loss; shape None takes the device's default size for that loss (sizes: CUDA
    large enough to be bandwidth-bound; CPU small enough that the default table takes about a minute)."""
    device = torch.device(device)
    cls = LOSS_FAMILY[loss]
    return cls.from_dims(loss, shape or cls.default_dims(device), dtype, device, reduction=reduction, swap=swap)


def default_cases(device, family="all", none_backward="sum"):
    """The built-in cases of `family` ('all': every family), each family's typical mean cases first,
    then its reduction='none' variants, whose backward is reached as `none_backward` says
    (LossCase.NONE_BACKWARDS)."""
    device = torch.device(device)
    cases = [c for name, module in FAMILIES.items() if family in ("all", name) for c in module.default_cases(device)]
    for c in cases:
        if c.reduction == "none":
            c.none_backward = none_backward
    return cases


# Sizes --plot sweeps: factors of each loss's default (or --shape) size, scaling the batch dimension
# (rows; ctc_loss: N; elementwise losses: the element count). CPU: three sizes over 64x, so that a
# sweep of every loss stays near two minutes on 2 cores.
PLOT_SCALES = {"cpu": (1 / 64, 1 / 8, 1.0), "cuda": (1 / 256, 1 / 32, 1 / 4, 1.0)}


def case_dims(case):
    """The case's shape as make_case takes it (ROWSxCLASSES, NxD, TxNxCxS or the input's shape)."""
    return case.dims()


def sweep_cases(losses, shape, dtype, device, reduction="mean", scales=None, swap=False):
    """For each loss, make_case at `shape` (None: the device's default size) scaled by each factor in
    `scales` along its batch dimension (the case class's batch_dim: ctc_loss N, others the first)."""
    device = torch.device(device)
    scales = sorted(scales or PLOT_SCALES["cuda" if device.type == "cuda" else "cpu"])
    cases = []
    for loss in losses:
        base = list(case_dims(make_case(loss, shape, dtype, device, reduction=reduction, swap=swap)))
        dim = LOSS_FAMILY[loss].batch_dim
        for f in scales:
            dims = list(base)
            dims[dim] = max(1, round(base[dim] * f))
            cases.append(make_case(loss, tuple(dims), dtype, device, reduction=reduction, swap=swap))
    return cases


class Progress:
    """Progress of a run, on stderr. On a terminal: one line rewritten in place ('[3/27] case ...').
    Anywhere else (a CI log, a file, a pipe): one whole line per case once it is done, with its result,
    so that a log reads line by line instead of one long line of carriage-return-joined fragments."""

    def __init__(self, total, stream=None, enabled=True):
        self.total, self.enabled = total, enabled
        self.stream = stream if stream is not None else sys.stderr
        try:
            self.tty = self.stream.isatty()
        except (AttributeError, ValueError):
            self.tty = False
        self.width = max(20, shutil.get_terminal_size((80, 24)).columns - 1) if self.tty else 0
        self._shown = False  # a TTY line to clear

    def _clear(self):
        if self._shown:
            print("\r" + " " * self.width + "\r", end="", file=self.stream, flush=True)
            self._shown = False

    def start(self, i, name):
        if self.enabled and self.tty:  # truncated to the terminal: a wrapped line would not be rewritten
            text = f"[{i + 1}/{self.total}] {name} ..."[:self.width]
            print("\r" + text.ljust(self.width), end="", file=self.stream, flush=True)
            self._shown = True

    def done(self, i, name, result):
        if self.enabled and not self.tty:
            print(f"[{i + 1}/{self.total}] {name}: {result}", file=self.stream, flush=True)

    def note(self, text):
        """A message that stays (a skipped case, a failure): a whole line in both modes."""
        self._clear()
        print(text, file=self.stream, flush=True)

    def finish(self):
        self._clear()


def run_cases(cases, repeats, out=sys.stdout, progress=True, min_seconds=None):
    """Time fastloss and torch on each case (interleaved); on CPU, cheap cases get extra rounds up to
    `min_seconds` per case (default 0.5 s) because single runs there vary by +-30%.
    Returns (rows, copy bandwidth or None); a row: case (the name), case_obj, fastloss and torch (s),
    speedup, and on CUDA gbps and bw_frac."""
    device = cases[0].device
    bw = copy_bandwidth(device) if device.type == "cuda" else None
    if min_seconds is None:
        min_seconds = 0.0 if device.type == "cuda" else 0.5
    prog = Progress(len(cases), enabled=progress)
    rows = []
    for i, case in enumerate(cases):
        if case.function("fastloss") is None:
            prog.note(f"skipping {case.name()}: fastloss.functional has no {case.loss} in this build")
            continue
        prog.start(i, case.name())
        inputs = case.inputs()
        res = {"case": case.name(), "case_obj": case}
        res.update(compare({impl: case.step(impl, *inputs) for impl in ["fastloss", "torch"]}, device,
                           repeats=repeats, min_seconds=min_seconds))
        res["speedup"] = res["torch"] / res["fastloss"]
        if bw and case.bandwidth_bound:  # a GEMM-bound case (the LM head) gets no bandwidth figures
            res["gbps"] = case.min_bytes() / res["fastloss"] / 1e9
            res["bw_frac"] = case.min_bytes() / res["fastloss"] / bw
        rows.append(res)
        prog.done(i, case.name(), f"fastloss {res['fastloss'] * 1e3:.3f} ms, torch {res['torch'] * 1e3:.3f} ms, "
                                  f"{res['speedup']:.2f}x")
        del inputs
    prog.finish()
    return rows, bw


def device_name(device):
    """The GPU's name, or the CPU's model (from /proc/cpuinfo where there is one)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


NONE_LEGEND = {
    "grad": "none: loss(reduction='none').backward(g), g a fixed random tensor of the loss's shape",
    "sum": "none.sum: loss(reduction='none').sum().backward() (the loss gets an expanded scalar gradient)",
}


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
            line += f" {r['gbps']:.0f} | {100 * r['bw_frac']:.0f}% |" if "gbps" in r else " - | GEMM-bound |"
        lines.append(line)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    threads = "" if device.type == "cuda" else f", {torch.get_num_threads()} threads"
    lines.append("")
    lines.append(f"forward+backward, median; device: {name}{threads}; torch {torch.__version__}"
                 + (f"; measured copy bandwidth {bw / 1e9:.0f} GB/s (read+write)" if bw else ""))
    nones = sorted({r["case_obj"].none_backward for r in rows
                    if "case_obj" in r and r["case_obj"].reduction == "none"})
    if nones:
        lines.append("; ".join(NONE_LEGEND[n] for n in nones) + ".")
    return "\n".join(lines)


# Fields of a --json / --csv record, one per case. Times in milliseconds; speedup = torch_ms / fastloss_ms;
# gbps (minimal bytes / fastloss time) and copy_bw_frac (of the measured copy bandwidth) on CUDA only.
RECORD_FIELDS = ("case", "loss", "family", "shape", "elements", "dtype", "reduction", "backward", "options",
                 "device", "device_name", "threads", "fastloss_ms", "torch_ms", "speedup", "gbps", "copy_bw_frac",
                 "torch_version", "commit", "date")


def run_info(device):
    """The fields every record of one run shares."""
    device = torch.device(device)
    return {"device": str(device), "device_name": device_name(device),
            "threads": torch.get_num_threads() if device.type == "cpu" else None,
            "torch_version": torch.__version__, "commit": fastloss_commit() or None,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def case_record(case, info, row=None):
    """One case as a flat dict of RECORD_FIELDS (timing fields None without a measured row)."""
    row = row or {}
    ms = (lambda k: row[k] * 1e3 if k in row else None)
    rec = {"case": case.name(), "loss": case.loss, "family": case.family, "shape": case.shape_label(),
           "elements": case.elements(), "dtype": DTYPE_NAMES[case.dtype], "reduction": case.reduction,
           "backward": case.backward_label(), "options": case.extras().strip() or None,
           "fastloss_ms": ms("fastloss"), "torch_ms": ms("torch"), "speedup": row.get("speedup"),
           "gbps": row.get("gbps"), "copy_bw_frac": row.get("bw_frac")}
    rec.update(info)
    return {k: rec[k] for k in RECORD_FIELDS}


def format_json(records):
    """A JSON array, one record per line (parseable as a whole, greppable line by line)."""
    return "[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]"


def format_csv(records):
    """CSV with a header row; None is an empty field."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=RECORD_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in records:
        w.writerow({k: "" if v is None else v for k, v in r.items()})
    return buf.getvalue().rstrip("\n")


Y_TICKS = (1 / 64, 1 / 32, 1 / 16, 1 / 8, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1, 1.25, 1.5, 2, 3, 4, 6, 8, 12, 16, 24,
           32, 48, 64, 128, 256)


def plot_speedups(rows, path, device):
    """speed-up (torch time / fastloss time, log scale) against the main input's element count (log
    scale), one line per loss (and dtype, options, reduction), one panel per family; written to `path`
    (the format from its extension: .png, .svg, .pdf)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    panels = {}  # family -> series -> [(elements, speedup)]
    for r in rows:
        c = r["case_obj"]
        panels.setdefault(c.family, {}).setdefault(c.series(), []).append((c.elements(), r["speedup"]))
    n = max(1, len(panels))
    cols = min(3, n)
    nrows = (n + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(max(6.4, 5.2 * cols), 4.0 * nrows + 0.6), squeeze=False)
    for ax, (family, series) in zip(axes.flat, sorted(panels.items())):
        for label, pts in sorted(series.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax.axhline(1.0, color="gray", linestyle="--", linewidth=1)
        # log axes with few, readable ticks: the sizes measured (4K, 1M, ...; powers of 4 when many) and
        # round speed-ups (powers of 2 when the range is wide)
        ax.set_xscale("log")
        ax.set_yscale("log")
        xs = sorted({p[0] for pts in series.values() for p in pts})
        if len(xs) > 6:
            xs = [4**k for k in range(math.ceil(math.log(xs[0], 4)), math.floor(math.log(xs[-1], 4)) + 1)] or xs[:1]
        ax.set_xticks(xs, [fmt_count(x) for x in xs])
        ys = [p[1] for pts in series.values() for p in pts] + [1.0]
        lo, hi = min(ys) / 1.15, max(ys) * 1.15
        ticks = [t for t in Y_TICKS if lo <= t <= hi]
        if len(ticks) > 8:
            ticks = [t for t in ticks if math.log2(t).is_integer()]
        ax.set_yticks(ticks, [f"{t:g}x" if t >= 0.1 else f"1/{round(1 / t)}x" for t in ticks])
        ax.set_ylim(lo, hi)
        ax.xaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_minor_locator(NullLocator())
        ax.set_title(family)
        ax.set_xlabel("elements of the input")
        ax.set_ylabel("speed-up vs torch (x)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    threads = "" if device.type == "cuda" else f", {torch.get_num_threads()} threads"
    fig.suptitle(f"fastloss vs torch eager, forward+backward, median\n{device_name(device)}{threads}, "
                 f"torch {torch.__version__}, {datetime.date.today().isoformat()}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------- side by side (the benchmarks/bench_<family>.py scripts)
def torch_compiled(case):
    """torch.compile (static shapes; fullgraph unless case.compile_fullgraph is False) of torch's function
    with the case's arguments bound.
    Dynamo's caches are reset first: every case compiles afresh, so cases neither share compiled code
    nor run into the recompile limit (past it torch.compile silently runs eager)."""
    torch._dynamo.reset()
    return torch.compile(case.bound(case.function("torch")), fullgraph=case.compile_fullgraph, dynamic=False)


def measure_impls(case, impls, repeats, min_seconds=0.0, note=None):
    """For each implementation (name -> callable on the case's inputs): median forward+backward and
    forward-only (no_grad) seconds, timed interleaved across the implementations, and on CUDA the peak
    memory allocated above the steady state during forward+backward. Returns name -> (fwd+bwd s,
    fwd s, peak extra bytes or None). An implementation that fails is reported on stderr (through
    `note`, a Progress.note, when given) and gets NaN."""
    inputs = case.inputs()
    g = case.grad_output(inputs)
    fb = {n: fwd_bwd(f, inputs, g) for n, f in impls.items()}
    fo = {n: fwd_only(f, inputs) for n, f in impls.items()}
    ok = []
    for n in impls:
        try:  # the first calls compile (torch.compile) and show whether it runs at all
            fb[n]()
            fo[n]()
            sync(case.device)
            ok.append(n)
        except Exception as e:  # noqa: BLE001 - a failing implementation is reported, not fatal
            msg = f"  {case.name()}: {n} failed: {type(e).__name__}: {str(e)[:300]}"
            if note:
                note(msg)
            else:
                print("\n" + msg, file=sys.stderr)
    t_fb = compare({n: fb[n] for n in ok}, case.device, repeats=repeats, min_seconds=min_seconds) if ok else {}
    t_fo = compare({n: fo[n] for n in ok}, case.device, repeats=repeats, min_seconds=min_seconds) if ok else {}
    nan = float("nan")
    res = {n: (t_fb.get(n, nan), t_fo.get(n, nan), peak_extra_memory(fb[n], case.device) if n in ok else None)
           for n in impls}
    del inputs, g, fb, fo
    return res


def fastloss_commit():
    """`git describe`-like commit of the fastloss checkout ('' outside a git checkout)."""
    import os
    import subprocess
    try:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return head + ("+changes" if head and dirty else "")
    except Exception:  # noqa: BLE001
        return ""


def side_by_side_markdown(title, device, bw, results, notes=()):
    """The markdown the benchmarks/ scripts print (and RESULTS.md pastes): a header with device,
    torch version, date and commit; one row per (case, implementation); notes below.
    results: list of (case, {impl: (fwd+bwd s, fwd s, peak bytes)}), torch eager among the impls."""
    import datetime
    if device.type == "cuda":
        dev = torch.cuda.get_device_name(device)
        cuda = f" · CUDA {torch.version.cuda}"
    else:
        dev, cuda = f"CPU ({torch.get_num_threads()} threads)", ""
    commit = fastloss_commit()
    lines = [f"## {title}, {dev}", "",
             f"{datetime.date.today().isoformat()} · torch {torch.__version__}{cuda}"
             + (f" · copy bandwidth {bw / 1e9:.0f} GB/s (read+write)" if bw else "")
             + (f" · fastloss {commit}" if commit else ""), ""]
    head = "| case | impl | fwd+bwd ms | fwd ms | fwd+bwd vs torch | fwd vs torch |"
    sep = "|---|---|---:|---:|---:|---:|"
    if bw:
        head += " GB/s (min bytes) | of copy BW | fwd of copy BW | peak extra MiB |"
        sep += "---:|---:|---:|---:|"
    lines += [head, sep]
    for case, res in results:
        base_fb, base_fo = res["torch"][0], res["torch"][1]
        for impl, (fb, fo, mem) in res.items():
            if fb != fb:  # NaN: the implementation failed (reason on stderr)
                lines.append(f"| {case.name()} | {impl} | failed |" + " - |" * (len(sep.split("|")) - 5))
                continue
            row = (f"| {case.name()} | {impl} | {fb * 1e3:.3f} | {fo * 1e3:.3f} | {base_fb / fb:.2f}x |"
                   f" {base_fo / fo:.2f}x |")
            if bw:
                mb, mf = case.min_bytes(backward=True), case.min_bytes(backward=False)
                row += (f" {mb / fb / 1e9:.0f} | {100 * mb / fb / bw:.0f}% | {100 * mf / fo / bw:.0f}% |"
                        + (f" {mem / 2**20:.0f} |" if mem is not None else " - |"))
            lines.append(row)
    lines.append("")
    lines += list(notes)
    return "\n".join(lines)


def side_by_side_main(argv, doc, specs_fn, build, title, notes, loss_example):
    """The command line of the benchmarks/ side-by-side scripts: filters, timing of fastloss, torch
    eager and torch.compile per case, and the markdown table (printed, and written with --out).
    specs_fn(device, quick) -> [(loss, shape, dtype name, reduction, ...)]; build(spec, device) -> case."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true",
                    help="small sizes and few repeats (CPU smoke test); torch.compile on each loss's first case only")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (its compile time is long)")
    ap.add_argument("--loss", help=f"comma-separated subset, e.g. {loss_example}")
    ap.add_argument("--dtype", help="comma-separated subset of fp32,bf16,fp16,fp64")
    ap.add_argument("--reduction", help="comma-separated subset of mean,none")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--out", help="also write the markdown here")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    try:
        losses = [loss_name(s) for s in args.loss.split(",")] if args.loss else None
    except ValueError as e:
        ap.error(str(e))
    dtypes = args.dtype.split(",") if args.dtype else list(DTYPES)
    reductions = args.reduction.split(",") if args.reduction else ["mean", "none"]
    specs = [s for s in specs_fn(dev, args.quick)
             if (losses is None or s[0] in losses) and s[2] in dtypes and s[3] in reductions]
    if not specs:
        ap.error("no case left after the filters")
    if dev.type == "cuda":
        repeats, min_seconds = args.repeats or (10 if args.quick else 30), 0.0
    else:  # CPU times vary run to run: interleave, and give cheap cases more rounds
        repeats, min_seconds = args.repeats or (3 if args.quick else 7), (0.2 if args.quick else 0.5)

    bw = copy_bandwidth(dev) if dev.type == "cuda" else None
    results, compiled_losses = [], set()
    prog = Progress(len(specs))
    for i, spec in enumerate(specs):
        case = build(spec, dev)
        if case.function("fastloss") is None:
            prog.note(f"skipping {case.name()}: fastloss.functional has no {case.loss}")
            continue
        impls = {"fastloss": case.bound(case.function("fastloss")), "torch": case.bound(case.function("torch"))}
        if not args.no_compile and (not args.quick or case.loss not in compiled_losses):
            impls["torch.compile"] = torch_compiled(case)
            compiled_losses.add(case.loss)
        prog.start(i, case.name())
        res = measure_impls(case, impls, repeats, min_seconds, note=prog.note)
        results.append((case, res))
        prog.done(i, case.name(), ", ".join(f"{n} {fb * 1e3:.3f} ms" for n, (fb, _, _) in res.items()))
    prog.finish()

    notes = list(notes)
    if args.quick and not args.no_compile:
        notes.append("--quick: torch.compile measured on each loss's first case only.")
    text = side_by_side_markdown(title, dev, bw, results, notes)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m fastloss.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--family", default="all", choices=["all"] + list(FAMILIES),
                    help="default cases of one family only (default: all)")
    ap.add_argument("--loss", help="comma-separated loss names, e.g. cross_entropy,nll_loss or mse,smooth_l1 "
                                   f"(known: {', '.join(LOSS_FAMILY)}; default: the built-in cases)")
    ap.add_argument("--shape", help="ROWSxCLASSES (cross_entropy, nll_loss, multi_margin, multilabel_margin), "
                                    "NxD (triplet, cosine), TxNxCxS (ctc_loss), ROWSxHIDDENxCLASSES "
                                    "(linear_cross_entropy) or the input's shape / element count (elementwise "
                                    "losses), e.g. 8192x128256, 64M, 200x16x32x50")
    ap.add_argument("--dtype", choices=list(DTYPES), help="fp64, fp32, bf16 or fp16")
    ap.add_argument("--reduction", choices=["mean", "sum", "none"], help="with --loss (default mean)")
    ap.add_argument("--none-backward", choices=list(LossCase.NONE_BACKWARDS), default="sum",
                    help="how backward reaches a reduction='none' loss: sum = loss.sum().backward() (named "
                         "'none.sum' in the table), grad = loss.backward(g) with a fixed random g of the loss's "
                         "shape (named 'none') (default: sum)")
    ap.add_argument("--swap", action="store_true", help="triplet losses: swap=True")
    ap.add_argument("--only", metavar="REGEX",
                    help="keep only the cases whose name (as --list prints it) matches this regular expression "
                         "(case-insensitive search), e.g. 'none', '^mse_loss', 'nll|smooth_l1'")
    ap.add_argument("--list", action="store_true",
                    help="print the cases, one per line, and exit without timing (with --json/--csv: their "
                         "records, timing fields empty)")
    out = ap.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true",
                     help="print the results as a JSON array of records (one per case, one per line) instead of "
                          f"the table; fields: {', '.join(RECORD_FIELDS)}")
    out.add_argument("--csv", action="store_true", help="print the results as CSV (same fields) instead of the table")
    ap.add_argument("--plot", metavar="FILE",
                    help="time each selected loss (--loss, --family, or every loss) at several sizes and draw "
                         "speed-up vs size, one panel per family, into FILE (.png, .svg, .pdf; needs matplotlib)")
    ap.add_argument("--scales", metavar="F,F,...",
                    help="with --plot: factors of the default (or --shape) size along the batch dimension "
                         f"(default: CPU {fmt_scales(PLOT_SCALES['cpu'])}, CUDA {fmt_scales(PLOT_SCALES['cuda'])})")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed repetitions (median is reported; on CPU cheap cases get more, up to --min-time)")
    ap.add_argument("--min-time", type=float, default=None, metavar="SECONDS",
                    help="on CPU, cheap cases get extra rounds until this much time is spent on each "
                         "(default 0.5; CUDA: 0)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not fastloss.cuda_built():
        ap.error("this fastloss build has no CUDA kernels")
    if args.scales and not args.plot:
        ap.error("--scales goes with --plot")
    if args.plot and not args.list:
        try:
            import matplotlib  # noqa: F401 - checked before any timing
        except ImportError:
            ap.error("--plot needs matplotlib (pip install matplotlib)")
    try:
        only = re.compile(args.only, re.IGNORECASE) if args.only else None
    except re.error as e:
        ap.error(f"--only: {e}")

    custom = args.loss or args.shape or args.dtype or args.reduction or args.swap
    try:
        if args.loss:
            losses = [loss_name(s) for s in args.loss.split(",")]
        elif args.family != "all":
            losses = [loss for loss in LOSS_FAMILY if _losses.by_name(loss).family == args.family]
        else:
            losses = list(LOSS_FAMILY) if args.plot else ["cross_entropy"]
        shape = parse_shape(args.shape) if args.shape else None
        dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
        reduction = args.reduction or "mean"
        swap = args.swap
        if args.plot:
            scales = [float(eval_fraction(f)) for f in args.scales.split(",")] if args.scales else None
            cases = sweep_cases(losses, shape, dtype, device, reduction, scales, swap=swap)
        elif custom:
            cases = [make_case(loss, shape, dtype, device, reduction=reduction, swap=swap) for loss in losses]
        else:
            cases = default_cases(device, args.family, args.none_backward)
    except ValueError as e:
        ap.error(str(e))
    for c in cases:
        c.none_backward = args.none_backward
    if only:
        cases = [c for c in cases if only.search(c.name())]
    if not cases:
        ap.error("no case left after the filters")

    if args.list:
        if args.json or args.csv:
            info = run_info(device)
            records = [case_record(c, info) for c in cases]
            print(format_json(records) if args.json else format_csv(records))
        else:
            print("\n".join(c.name() for c in cases))
        return

    repeats = args.repeats or (20 if device.type == "cuda" else 5)
    rows, bw = run_cases(cases, repeats, min_seconds=args.min_time)
    if args.json or args.csv:
        info = run_info(device)
        records = [case_record(r["case_obj"], info, r) for r in rows]
        print(format_json(records) if args.json else format_csv(records))
    else:
        print(format_table(rows, bw, device))
    if args.plot:
        plot_speedups(rows, args.plot, device)
        print(f"wrote {args.plot}", file=sys.stderr)


def fmt_scales(scales):
    """(1/64, 1/8, 1.0) -> '1/64,1/8,1' (the form --scales takes)."""
    return ",".join(f"1/{round(1 / f)}" if f < 1 else f"{f:g}" for f in scales)


def eval_fraction(s):
    """'1/64' -> 0.015625, '0.25' -> 0.25 (a --scales factor; must be > 0)."""
    num, _, den = s.strip().partition("/")
    f = float(num) / float(den) if den else float(num)
    if not f > 0:
        raise ValueError(f"--scales: {s!r} is not a positive factor")
    return f
