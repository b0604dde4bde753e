"""`python -m fastloss.bench`'s command line on the CPU, on tiny cases: --list, --only, --json / --csv,
--plot, and progress that reads line by line in a log. No timing is asserted (timing lives in
benchmarks/): only that the output is there, parseable and consistent."""
import csv
import datetime
import io
import json

import pytest
import torch

from fastloss import bench

# Two tiny reduction='none' cases, one timed round each: the whole run takes well under a second.
TINY = ["--device", "cpu", "--loss", "mse,smooth_l1", "--shape", "4K", "--reduction", "none",
        "--repeats", "1", "--min-time", "0"]


def run(capsys, *argv):
    bench.main(list(argv))
    return capsys.readouterr()


@pytest.fixture
def no_timing(monkeypatch):
    """Fails the test if anything is timed."""
    def fail(*a, **k):
        raise AssertionError("--list must not time anything")
    monkeypatch.setattr(bench, "compare", fail)


def test_list_default_cases_with_none_reductions(capsys, no_timing):
    names = run(capsys, "--list", "--device", "cpu").out.splitlines()
    assert names == [c.name() for c in bench.default_cases("cpu")]
    # issue 19's CPU shapes, and a 'none' variant in every family
    assert "nll_loss fp32 1024x32000" in names
    assert "smooth_l1_loss fp32 4M none.sum" in names
    recs = json.loads(run(capsys, "--list", "--json", "--device", "cpu").out)
    assert [r["case"] for r in recs] == names
    none_families = {r["family"] for r in recs if r["reduction"] == "none"}
    # every family with cases on this torch (linear_cross_entropy: torch >= 2.14)
    assert none_families == {f for f, m in bench.FAMILIES.items() if m.default_cases(torch.device("cpu"))}
    assert len(none_families) >= 5
    assert all(r["backward"] == "sum()" for r in recs if r["reduction"] == "none")
    assert all(r["fastloss_ms"] is None and r["speedup"] is None for r in recs)


def test_list_none_backward_grad_and_only(capsys, no_timing):
    names = run(capsys, "--list", "--device", "cpu", "--only", "none", "--none-backward", "grad").out.splitlines()
    assert names and all(n.endswith(" none") for n in names)
    names = run(capsys, "--list", "--device", "cpu", "--only", "^NLL_loss").out.splitlines()  # case-insensitive
    assert len(names) >= 2 and all(n.startswith("nll_loss ") for n in names)
    with pytest.raises(SystemExit):
        bench.main(["--list", "--device", "cpu", "--only", "no such case"])


def check_record(rec, loss):
    assert rec["loss"] == loss and rec["family"] == "pointwise"
    assert rec["shape"] == "4K" and rec["elements"] == 4096
    assert rec["dtype"] == "fp32" and rec["reduction"] == "none" and rec["backward"] == "sum()"
    assert rec["case"] == f"{loss} fp32 4K none.sum"
    assert rec["device"] == "cpu" and rec["device_name"] and rec["threads"] == torch.get_num_threads()
    assert rec["torch_version"] == torch.__version__
    datetime.datetime.fromisoformat(rec["date"])
    f, t = float(rec["fastloss_ms"]), float(rec["torch_ms"])
    assert f > 0 and t > 0
    assert float(rec["speedup"]) == pytest.approx(t / f)


def test_json(capsys):
    res = run(capsys, "--json", *TINY)
    recs = json.loads(res.out)
    assert len(recs) == 2
    for rec, loss in zip(recs, ["mse_loss", "smooth_l1_loss"]):
        assert list(rec) == list(bench.RECORD_FIELDS)
        check_record(rec, loss)
        assert rec["gbps"] is None and rec["copy_bw_frac"] is None  # CUDA only


def test_csv(capsys):
    res = run(capsys, "--csv", *TINY)
    reader = csv.DictReader(io.StringIO(res.out))
    assert tuple(reader.fieldnames) == bench.RECORD_FIELDS
    rows = list(reader)
    assert len(rows) == 2
    for row, loss in zip(rows, ["mse_loss", "smooth_l1_loss"]):
        row["elements"], row["threads"] = int(row["elements"]), int(row["threads"])
        check_record(row, loss)
        assert row["gbps"] == "" and row["copy_bw_frac"] == ""


def test_table_and_progress_in_a_log(capsys):
    """Without a terminal (capsys is not one) progress is one whole line per case, no carriage return;
    the table (stdout) has one row per case and says how 'none' was differentiated."""
    res = run(capsys, *TINY)
    lines = res.err.splitlines()
    assert "\r" not in res.err
    assert len(lines) == 2
    assert lines[0].startswith("[1/2] mse_loss fp32 4K none.sum: fastloss ")
    assert lines[1].startswith("[2/2] smooth_l1_loss fp32 4K none.sum: fastloss ")
    rows = [line for line in res.out.splitlines() if line.startswith("| ") and "none.sum" in line]
    assert len(rows) == 2
    assert ".sum().backward()" in res.out


def test_progress_on_a_terminal_rewrites_one_line():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    s = Tty()
    p = bench.Progress(3, stream=s)
    for i in range(3):
        p.start(i, f"case {i}")
        p.done(i, f"case {i}", "1 ms")
    p.finish()
    text = s.getvalue()
    assert "\n" not in text and text.count("\r") >= 3 and "[3/3] case 2 ..." in text


def test_none_sum_counts_no_upstream_gradient_read():
    g = bench.RegressionCase("mse_loss", 1024, torch.float32, "cpu", reduction="none")
    s = bench.RegressionCase("mse_loss", 1024, torch.float32, "cpu", reduction="none")
    s.none_backward = "sum"
    assert g.min_bytes() - s.min_bytes() == 1024 * 4  # the random grad_output, read once
    assert g.min_bytes(backward=False) == s.min_bytes(backward=False)


def test_plot(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "speedup.png"
    res = run(capsys, "--plot", str(path), "--device", "cpu", "--loss", "mse,l1", "--shape", "4K",
              "--scales", "1/4,1", "--repeats", "1", "--min-time", "0")
    names = [line.split(" | ")[0][2:] for line in res.out.splitlines() if line.startswith("| ") and "_loss" in line]
    assert names == ["mse_loss fp32 1K", "mse_loss fp32 4K", "l1_loss fp32 1K", "l1_loss fp32 4K"]
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_sweep_cases(capsys, no_timing):
    argv = ["--list", "--device", "cpu", "--plot", "x.png", "--loss", "ctc_loss,cross_entropy"]
    names = run(capsys, *argv).out.splitlines()
    assert names == ["ctc_loss fp32 T200 N1 C32 S50", "ctc_loss fp32 T200 N2 C32 S50", "ctc_loss fp32 T200 N16 C32 S50",
                     "cross_entropy fp32 16x32000", "cross_entropy fp32 128x32000", "cross_entropy fp32 1024x32000"]
