"""Reads the logs of tools/gpu_check.sh's steps and prints one summary row per family, for SUMMARY.md.

    python tools/gpu_check_report.py smoke LOG
    python tools/gpu_check_report.py tests LOG
    python tools/gpu_check_report.py sanitize LOG            (memcheck or racecheck output)
    python tools/gpu_check_report.py bench TABLE.md
    python tools/gpu_check_report.py ninja DIR_OR_GLOB...    (slowest compile steps of the newest build)

Each row is `family<TAB>status<TAB>detail` (status: pass, FAIL or partial). Logs cut short by a
time cap still give rows for what they hold. Plain Python, no torch: it runs anywhere.
"""
import collections
import glob
import os
import re
import sys


def rows_smoke(text):
    out = []
    totals = dict(re.findall(r"^SMOKE (\S+): (\d+ ok, \d+ failed)", text, re.M))
    per = collections.OrderedDict()
    for status, fam in re.findall(r"^(ok|FAIL) +(\S+) ", text, re.M):
        per.setdefault(fam, [0, 0])[0 if status == "ok" else 1] += 1
    first_fail = {}
    for fam, rest in re.findall(r"^FAIL (\S+) (.*)$", text, re.M):
        first_fail.setdefault(fam, rest)
    complete = "total" in totals
    for fam, (good, bad) in per.items():
        detail = f"{good} ok, {bad} failed"
        if bad:
            detail += f"; first: {first_fail[fam][:160]}"
        out.append((fam, "FAIL" if bad else ("pass" if complete else "partial"), detail))
    lost = re.search(r"^SMOKE CUDA context lost after: (.*)$", text, re.M)
    if lost:
        out.append(("(all)", "FAIL", f"CUDA context lost after {lost.group(1)[:160]}; later cases not run"))
    if not complete:
        out.append(("(all)", "partial", "no final count: cut short (cap) or crashed; see smoke.log"))
    elif "total" in totals:
        good, bad = map(int, re.findall(r"\d+", totals["total"]))
        secs = re.search(r"^SMOKE total: .* failed, ([\d.]+) s", text, re.M)
        out.append(("(all)", "FAIL" if bad else "pass",
                    f"{good} ok, {bad} failed" + (f", {secs.group(1)} s" if secs else "")))
    return out


_RESULT = re.compile(r"\b(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b:? ?(tests/[^\s:]+\.py)::(\S+)")
_RESULT_AFTER = re.compile(r"(tests/[^\s:]+\.py)::(\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")


def rows_tests(text):
    """pytest -v lines (plain: `path::test PASSED`; xdist: `[gw0] [ 1%] PASSED path::test`)."""
    per = collections.OrderedDict()
    seen = set()
    for line in text.splitlines():
        m = _RESULT.search(line)
        if m:
            status, path, test = m.groups()
        else:
            m = _RESULT_AFTER.search(line)
            if not m:
                continue
            path, test, status = m.groups()
        key = (path, test, status)
        if key in seen:  # the -rfE short summary repeats FAILED/ERROR lines
            continue
        seen.add(key)
        fam = os.path.basename(path)[len("test_"):-len(".py")]
        c = per.setdefault(fam, collections.Counter())
        c[status] += 1
        if status in ("FAILED", "ERROR") and "first" not in c:
            c["first"] = 0
            per[fam + ":first"] = test
    out = []
    tot = collections.Counter()
    for fam, c in per.items():
        if fam.endswith(":first"):
            continue
        bad = c["FAILED"] + c["ERROR"]
        for k in ("PASSED", "FAILED", "ERROR", "SKIPPED", "XFAIL", "XPASS"):
            tot[k] += c[k]
        detail = f"{c['PASSED']} passed, {c['FAILED']} failed, {c['ERROR']} errors, {c['SKIPPED']} skipped"
        if bad:
            detail += f"; first: {per[fam + ':first'][:140]}"
        out.append((fam, "FAIL" if bad else "pass", detail))
    final = re.findall(r"^=+ (.*(?:passed|failed|error|no tests ran).*) =+$", text, re.M)
    timeouts = len(re.findall(r"Timeout \(>[\d.]+s\) from pytest-timeout", text))
    detail = (f"{tot['PASSED']} passed, {tot['FAILED']} failed, {tot['ERROR']} errors, {tot['SKIPPED']} skipped"
              + (f", {timeouts} per-test timeouts" if timeouts else ""))
    if final:
        detail += f" (pytest: {final[-1]})"
        status = "FAIL" if tot["FAILED"] + tot["ERROR"] else "pass"
    else:
        detail += " -- no pytest final line: cut short by the cap"
        status = "partial" if not tot["FAILED"] + tot["ERROR"] else "FAIL"
    out.append(("(all)", status, detail))
    return out


def rows_sanitize(text):
    """compute-sanitizer output: every report block (a '========= ' line that is not indented, up to
    the next), whether its kernel or stack names fastloss; the tool's own summary line."""
    blocks, cur = [], None
    for line in text.splitlines():
        if not line.startswith("========="):
            continue
        body = line[len("========="):]
        if body.startswith(" ") and not body.startswith("  ") and not re.match(r" (ERROR|RACECHECK) SUMMARY", body):
            if body.strip() and not body.strip().startswith(("Saved host backtrace", "Host Frame",
                                                             "Device Frame", "COMPUTE-SANITIZER")):
                cur = [body.strip()]
                blocks.append(cur)
                continue
        if cur is not None:
            cur.append(body.strip())
    ours = [b for b in blocks if any("fastloss" in x for x in b)]
    others = [b for b in blocks if b not in ours]
    summaries = re.findall(r"=+ ((?:ERROR|RACECHECK) SUMMARY: .*)", text)
    progress = re.findall(r"^sanitize: (\S+)", text, re.M)
    done = re.search(r"^sanitize cases done: (.*)$", text, re.M)
    detail = (f"{len(ours)} reports in fastloss kernels, {len(others)} elsewhere"
              + (f"; {summaries[-1]}" if summaries else "; no summary line")
              + (f"; ran to the end ({done.group(1)})" if done else
                 f"; cut short during {progress[-1] if progress else 'startup'}"))
    if ours:
        detail += f"; first: {ours[0][0][:160]}"
    if done and "FAILED" in done.group(1):
        detail += "; a case group raised (see the log)"
    status = "FAIL" if ours or (done and "FAILED" in done.group(1)) else ("pass" if done else "partial")
    return [("(all)", status, detail)]


def _bench_family(loss):
    try:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
        from fastloss.bench import LOSS_FAMILY  # needs torch; the GPU machine has it
        return LOSS_FAMILY[loss].family
    except Exception:  # noqa: BLE001 - no torch here, or an unknown loss: the loss name stands in
        return loss


def rows_bench(text):
    per = collections.OrderedDict()
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not cells[0] or cells[0] == "case" or cells[0].startswith("---"):
            continue
        m = re.match(r"([0-9.]+)x$", cells[3])
        if not m:
            continue
        fam = _bench_family(cells[0].split()[0])
        frac = re.match(r"(\d+)%$", cells[5]) if len(cells) > 5 else None
        per.setdefault(fam, []).append((cells[0], float(m.group(1)), int(frac.group(1)) if frac else None))
    bw = re.search(r"copy bandwidth (\d+) GB/s", text)
    out = []
    for fam, rows in per.items():
        sp = [r[1] for r in rows]
        fr = [r[2] for r in rows if r[2] is not None]
        worst = min(rows, key=lambda r: r[1])
        detail = (f"{len(rows)} cases, {min(sp):.2f}x-{max(sp):.2f}x torch eager"
                  + (f", {min(fr)}-{max(fr)}% of copy BW" if fr else "") + f"; slowest vs torch: {worst[0]}")
        out.append((fam, "pass", detail))
    out.append(("(all)", "pass" if per else "partial",
                f"{sum(len(r) for r in per.values())} cases" + (f"; copy bandwidth {bw.group(1)} GB/s" if bw else "")))
    return out


def rows_ninja(build_dirs):
    """The newest .ninja_log under any of the folders (pip install -e builds in /tmp/*.build-temp)."""
    logs = sorted((f for d in build_dirs for g in glob.glob(d) for f in glob.glob(os.path.join(g, "**", ".ninja_log"),
                                                                               recursive=True)),
                  key=os.path.getmtime)
    if not logs:
        return [("(all)", "pass", "no .ninja_log found")]
    steps = {}
    with open(logs[-1]) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 4 and parts[0].isdigit():
                steps[parts[3]] = (int(parts[1]) - int(parts[0])) / 1000
    top = sorted(steps.items(), key=lambda kv: -kv[1])[:4]
    return [("(all)", "pass", f"{len(steps)} compile steps; slowest: "
             + ", ".join(f"{'/'.join(k.split('/')[-2:])[:-2]} {v:.0f} s" for k, v in top))]


def main(argv):
    if len(argv) < 3 or argv[1] not in ("smoke", "tests", "sanitize", "bench", "ninja") or (
            len(argv) > 3 and argv[1] != "ninja"):
        sys.exit(__doc__)
    kind, path = argv[1], argv[2]
    if kind == "ninja":
        rows = rows_ninja(argv[2:])
    else:
        try:
            with open(path, errors="replace") as f:
                text = f.read()
        except OSError as e:
            rows = [("(all)", "partial", f"no log: {e}")]
        else:
            parse = {"smoke": rows_smoke, "tests": rows_tests, "sanitize": rows_sanitize, "bench": rows_bench}[kind]
            rows = parse(text)
    for fam, status, detail in rows:
        print(f"{fam}\t{status}\t{' '.join(detail.split()).replace('|', '/')}")


if __name__ == "__main__":
    main(sys.argv)
