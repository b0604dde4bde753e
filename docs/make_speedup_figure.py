"""Draw docs/images/speedup.png (the README's and the performance guide's figure) from the measured
tables of benchmarks/RESULTS.md. No number is typed here: each bar is read from a table whose
heading gives the device, torch version and date, and the figure says which.

    python docs/make_speedup_figure.py            # needs matplotlib (not a project requirement)

Each SOURCE names a heading of RESULTS.md (a substring), a line inside that section that the table
follows (a substring, or None for the section's first table), the row to take (its first cell, exactly)
and the label to print. tests/test_docs.py checks that every source still parses, so a reworded RESULTS.md breaks
the test, not the figure silently.
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "RESULTS.md")
OUT = os.path.join(ROOT, "docs", "images", "speedup.png")

# (panel title, [(heading substring, table-anchor substring or None, case prefix, short label), ...])
PANELS = [
    ("NVIDIA H100 80GB HBM3 · torch 2.11.0+cu130 · 2026-11-22\n"
     "cross-entropy, forward+backward (python -m fastloss.bench)", [
        ("cross_entropy, NVIDIA H100", "`python -m fastloss.bench` (default cases), last run",
         "cross_entropy bf16 8192x128256 w ign0.1 ls0.1", "CE bf16 8192x128256\nweights+ignore+smoothing"),
        ("cross_entropy, NVIDIA H100", "`python -m fastloss.bench` (default cases), last run",
         "cross_entropy fp32 16384x32000", "CE fp32 16384x32000"),
        ("cross_entropy, NVIDIA H100", "`python -m fastloss.bench` (default cases), last run",
         "cross_entropy bf16 8192x128256", "CE bf16 8192x128256"),
        ("cross_entropy, NVIDIA H100", "`python -m fastloss.bench` (default cases), last run",
         "cross_entropy bf16 32768x50257", "CE bf16 32768x50257"),
        ("cross_entropy, NVIDIA H100", "`python -m fastloss.bench` (default cases), last run",
         "cross_entropy fp32 65536x128", "CE fp32 65536x128"),
        ("cross_entropy, NVIDIA H100", "`python -m fastloss.bench` (default cases), last run",
         "nll_loss fp32 16384x32000", "NLL fp32 16384x32000"),
    ]),
    ("CPU, 2 cores (AMD EPYC, AVX2) · torch 2.14.1+cu130 · 2026-11-22/23\n"
     "fp32, forward+backward, mean", [
        ("cross_entropy and nll_loss, CPU", None, "cross_entropy fp32 1024x32000 w ign0.1 ls0.1",
         "CE 1024x32000 w+ign+ls"),
        ("cross_entropy and nll_loss, CPU", None, "cross_entropy fp32 1024x32000", "CE 1024x32000"),
        ("Regression and embedding losses, CPU", None, "hinge_embedding_loss fp32 1M", "hinge_embedding 1M"),
        ("Regression and embedding losses, CPU", None, "cosine_embedding_loss fp32 4096x512",
         "cosine_embedding 4096x512"),
        ("Regression and embedding losses, CPU", None, "margin_ranking_loss fp32 1M", "margin_ranking 1M"),
        ("Regression and embedding losses, CPU", None, "triplet_margin_loss fp32 4096x512",
         "triplet_margin 4096x512"),
        ("Regression and embedding losses, CPU", None, "l1_loss fp32 4M", "l1 4M"),
        ("Regression and embedding losses, CPU", None, "mse_loss fp32 4M", "mse 4M"),
        ("CTC loss, CPU", None, "ctc_loss fp32 T500 N32 C64 S100", "ctc T500 N32 C64 S100"),
        ("Float32 vector walk", None, "sigmoid_focal_loss", "sigmoid_focal 1024x1024"),
        ("Float32 vector walk", None, "binary_cross_entropy", "BCE 1024x1024"),
        ("Float32 vector walk", None, "kl_div", "kl_div 1024x1024"),
    ]),
]


def _section(text, heading):
    """The text of the first '## ' section whose heading contains `heading`."""
    parts = re.split(r"^## ", text, flags=re.M)
    for part in parts[1:]:
        if heading in part.split("\n", 1)[0]:
            return part
    raise KeyError(f"RESULTS.md: no section heading contains {heading!r}")


def _table(section, anchor):
    """Rows (lists of cells) of the first markdown table after `anchor` (or the section's first)."""
    start = 0
    if anchor is not None:
        start = section.index(anchor)
    lines = section[start:].split("\n")
    rows, in_table = [], False
    for line in lines:
        if line.startswith("|"):
            in_table = True
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not set("".join(cells)) <= set("-: "):
                rows.append(cells)
        elif in_table:
            break
    if not rows:
        raise KeyError(f"RESULTS.md: no table after {anchor!r}")
    return rows


def _speedup(header, row):
    """The fastloss-vs-torch speed-up of one row: the speed-up column when it holds one number, else
    torch ms / fastloss ms from the same row."""
    cols = {h.lower(): i for i, h in enumerate(header)}
    for name in ("speed-up", "speed-up vs torch", "fwd+bwd vs torch"):
        if name in cols:
            m = re.fullmatch(r"([0-9.]+)x", row[cols[name]])
            if m:
                return float(m.group(1))
    fast = next(i for h, i in cols.items() if h.startswith("fastloss ms") or h == "after ms")
    torch_ = next(i for h, i in cols.items() if h.startswith("torch ms"))
    return float(row[torch_].split()[0]) / float(row[fast])


def measured(text=None):
    """[(panel title, [(label, speed-up), ...]), ...] read from RESULTS.md."""
    text = text if text is not None else open(RESULTS).read()
    out = []
    for title, sources in PANELS:
        bars = []
        for heading, anchor, case, label in sources:
            rows = _table(_section(text, heading), anchor)
            header, body = rows[0], rows[1:]
            # 'impl' tables (one row per implementation) keep the fastloss row
            impl = header.index("impl") if "impl" in header else None
            match = [r for r in body if r[0] == case]
            if impl is not None:
                match = [r for r in match if r[impl] == "fastloss"]
            if len(match) != 1:
                raise KeyError(f"RESULTS.md section {heading!r}: {len(match)} rows for {case!r}")
            bars.append((label, _speedup(header, match[0])))
        out.append((title, bars))
    return out


def main():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = measured()
    fig, axes = plt.subplots(1, len(panels), figsize=(13, 5.2),
                             gridspec_kw={"width_ratios": [len(b) for _, b in panels]})
    for ax, (title, bars) in zip(axes, panels):
        labels = [b[0] for b in bars]
        values = [b[1] for b in bars]
        colors = ["#2b8cbe" if v >= 1 else "#e34a33" for v in values]
        ax.barh(range(len(bars)), values, color=colors)
        ax.set_yticks(range(len(bars)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.axvline(1.0, color="black", lw=0.8)
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:.2f}x", va="center", fontsize=8)
        ax.set_xlim(0, max(values) * 1.2)
        ax.set_xlabel("speed-up over torch eager (x, higher is better; 1 = parity)")
        ax.set_title(title, fontsize=9)
    fig.suptitle("fastloss vs torch: measured speed-ups (benchmarks/RESULTS.md)", fontsize=11)
    fig.text(0.01, 0.01, "Medians of repeated runs, same-run ratios; the CPU is a shared 2-core VM (run-to-run "
             "spread +-10-30%). Other runs and the method: benchmarks/RESULTS.md.", fontsize=7, color="#555555")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    fig.savefig(OUT, dpi=110)
    print("wrote", os.path.relpath(OUT, ROOT))
    for title, bars in panels:
        print(title.replace("\n", " | "))
        for label, v in bars:
            print(f"  {label.replace(chr(10), ' '):40s} {v:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
