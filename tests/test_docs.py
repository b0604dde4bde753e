"""Every ```python block of README.md and docs/ runs, every script in examples/ trains to its own
asserted result, and the speed-up figure's sources still parse from benchmarks/RESULTS.md: the
documentation cannot drift from the code without failing here.

A block whose first line is `# needs: torch>=2.14` or `# needs: cuda` is skipped, with that reason,
where the requirement is missing. An example whose main() returns None skipped itself (a missing
optional package such as transformers, or torch < 2.14) and is reported as skipped.
"""
import glob
import os
import re
import runpy

import pytest
import torch

import fastloss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC_FILES = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "**", "*.md"),
                                                                 recursive=True))
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "examples", "*.py")))
NEEDS = {
    "torch>=2.14": (lambda: hasattr(torch.nn.functional, "linear_cross_entropy"),
                    "needs torch >= 2.14 (F.linear_cross_entropy)"),
    "cuda": (lambda: torch.cuda.is_available(), "needs a CUDA device"),
}


def _python_blocks():
    """(test id, code) of every ```python fenced block."""
    blocks = []
    for path in DOC_FILES:
        text = open(path, encoding="utf-8").read()
        for m in re.finditer(r"^```python\n(.*?)^```", text, flags=re.S | re.M):
            line = text.count("\n", 0, m.start()) + 1
            blocks.append((f"{os.path.relpath(path, ROOT)}:{line}", m.group(1)))
    return blocks


BLOCKS = _python_blocks()


def test_blocks_found():
    # a regex or layout change that finds nothing must not pass silently
    assert len(BLOCKS) >= 15 and any(i.startswith("README.md") for i, _ in BLOCKS)
    assert len(EXAMPLES) >= 5


@pytest.fixture
def clean_patch():
    yield
    if fastloss.is_patched():
        fastloss.unpatch()


@pytest.mark.parametrize("code", [c for _, c in BLOCKS], ids=[i for i, _ in BLOCKS])
def test_doc_block_runs(code, clean_patch):
    first = code.split("\n", 1)[0].strip()
    if first.startswith("# needs:"):
        need = first.split(":", 1)[1].strip()
        ok, reason = NEEDS[need]
        if not ok():
            pytest.skip(reason)
    torch.manual_seed(0)
    exec(compile(code, "<doc block>", "exec"), {"__name__": "__doc_block__"})


@pytest.mark.parametrize("path", EXAMPLES, ids=[os.path.basename(p) for p in EXAMPLES])
def test_example_runs(path, clean_patch):
    namespace = runpy.run_path(path, run_name="__example__")  # defines main() without running it
    if namespace["main"]() is None:
        pytest.skip(f"{os.path.basename(path)} skipped itself (optional dependency or torch version)")


def test_speedup_figure_sources_parse():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_speedup_figure",
                                                  os.path.join(ROOT, "docs", "make_speedup_figure.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    panels = mod.measured()
    assert [len(bars) for _, bars in panels] == [len(src) for _, src in mod.PANELS]
    for _, bars in panels:
        assert all(0 < v < 100 for _, v in bars)
    # the parser reads what the table says: a doctored copy changes the figure
    text = open(mod.RESULTS).read().replace("| nll_loss fp32 16384x32000 | 0.878 | 0.791 | 0.90x |",
                                            "| nll_loss fp32 16384x32000 | 0.878 | 0.791 | 9.90x |")
    doctored = dict(mod.measured(text)[0][1])
    assert doctored["NLL fp32 16384x32000"] == pytest.approx(9.90)


def test_doc_images_exist():
    for path in DOC_FILES:
        for ref in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", open(path, encoding="utf-8").read()):
            assert os.path.exists(os.path.normpath(os.path.join(os.path.dirname(path), ref))), (path, ref)


def test_readme_links_exist():
    # the README is read on the repository host, outside the mkdocs build that checks the docs' links
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    links = [ln.split("#")[0] for ln in re.findall(r"\]\(([^)]+)\)", text) if "://" not in ln]
    assert len(links) >= 10
    for link in links:
        assert os.path.exists(os.path.join(ROOT, link)), link
