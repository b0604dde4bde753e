"""ctc_loss (function and module) against torch.nn.functional.ctc_loss computed in float64 on the CPU:
loss and gradient over every reduction, zero_infinity, every dtype (bfloat16/float16 too, which torch
refuses), any blank index, repeated labels, zero input / target lengths, impossible alignments,
log_softmax'ed and raw log_probs, padded and concatenated targets of every integer type, lengths as
lists, tuples or tensors, unbatched input, non-contiguous inputs, long sequences (T >= 1000) where
float32 precision matters, extreme values; float64 gradcheck through log_softmax, and bad input
refused with a message naming the argument (torch.compile, determinism, no fallback:
tests/test_all_losses.py)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastloss
from conftest import call_and_check, device_params, DTYPES, REDUCTIONS, requires_cuda, TOL

BAD = (RuntimeError, IndexError, ValueError)


def ctc():
    """The fastloss function (looked up at call time, so collection works before it exists)."""
    return fastloss.functional.ctc_loss


# ------------------------------------------------------------------------------------- helpers
def needed_length(row, L):
    """Shortest input a target row of length L aligns to: L, plus one blank between adjacent repeats."""
    t = row[:L]
    return L + int((t[1:] == t[:-1]).sum()) if L > 0 else 0


def make_targets(N, S, C, blank, pool=None):
    """(N, S) int64 labels in [0, C) other than blank; pool keeps only the first `pool` labels (repeats)."""
    labels = torch.tensor([c for c in range(C) if c != blank], dtype=torch.int64)
    if pool:
        labels = labels[:pool]
    if S == 0 or len(labels) == 0:
        return torch.zeros(N, S, dtype=torch.int64)
    return labels[torch.randint(0, len(labels), (N, S))]


def make_lengths(targets, T, mode):
    """Input and target lengths (lists of ints) for the rows of `targets` (N, S).
    full: every (T, S). random: row 0 (T, S), others random and feasible (some target lengths 0).
    tight: every input length exactly the shortest feasible one. edge: the special samples below."""
    N, S = targets.shape
    il, tl = [], []
    for n in range(N):
        row = targets[n]
        if mode == "edge":
            kind = n % 8
            L = {0: S, 1: 0, 2: min(2, S), 3: 0, 4: S, 5: S, 6: min(1, S), 7: max(S - 1, 0)}[kind]
            Ti = {0: T, 1: 0, 2: 0, 3: T, 4: needed_length(row, L) - 1, 5: needed_length(row, L), 6: 1,
                  7: T - 1}[kind]  # 1: (0, 0) -> -0.0; 2: (0, 2) -> inf; 4: one step short -> inf
            il.append(max(Ti, 0))
            tl.append(L)
            continue
        L = S if mode in ("full", "tight") or n == 0 else int(torch.randint(0, S + 1, ()))
        while needed_length(row, L) > T:
            L -= 1
        lo = needed_length(row, L)
        if mode == "tight":
            Ti = lo
        elif mode == "full" or n == 0:
            Ti = T
        else:
            Ti = int(torch.randint(lo, T + 1, ()))
        il.append(Ti)
        tl.append(L)
    return il, tl


def make_log_probs(T, N, C, dtype, device, raw=False, scale=1.0):
    """log_softmax'ed (or raw: plain randn, unnormalized) log_probs, made in float64 then rounded to dtype."""
    x = torch.randn(T, N, C, dtype=torch.float64) * scale
    lp = x if raw else x.log_softmax(-1)
    return lp.to(dtype).to(device)


def make_case(T, N, C, S, blank=0, pool=None, lengths="random", dtype=torch.float64, device="cpu", raw=False,
              scale=1.0):
    targets = make_targets(N, S, C, blank, pool)
    il, tl = make_lengths(targets, T, lengths)
    return make_log_probs(T, N, C, dtype, device, raw, scale), targets.to(device), il, tl


def concat(targets, tl):
    return torch.cat([targets[n, :tl[n]] for n in range(len(tl))]) if len(tl) else targets.reshape(-1)


def upstream(loss, N):
    """grad_output: random per sample for reduction='none', a scalar other than 1 otherwise (float64)."""
    if loss.dim() == 1:
        return torch.rand(N, dtype=torch.float64, device=loss.device) + 0.5
    return torch.tensor(1.7, dtype=torch.float64, device=loss.device)


def ctc_ref(lp, targets, il, tl, blank=0, reduction="mean", zero_infinity=False, grad_out=None):
    """torch's ctc_loss in float64 on the CPU on the upcast log_probs; returns (loss, grad)."""
    x = lp.detach().to("cpu", torch.float64).requires_grad_()
    loss = F.ctc_loss(x, targets.cpu().long().contiguous(), [int(v) for v in il], [int(v) for v in tl], blank=blank,
                      reduction=reduction, zero_infinity=zero_infinity)
    if grad_out is None:
        return loss.detach(), None
    grad, = torch.autograd.grad(loss, x, grad_out.to("cpu", torch.float64))
    return loss.detach(), grad


def run_ours(lp, targets, il, tl, blank=0, reduction="mean", zero_infinity=False, grad_out=None):
    """fastloss's loss and gradient (for grad_out, float64, cast to the loss dtype)."""
    x = lp.detach().clone().requires_grad_()
    loss = ctc()(x, targets, il, tl, blank=blank, reduction=reduction, zero_infinity=zero_infinity)
    if grad_out is None:
        grad_out = torch.ones_like(loss, dtype=torch.float64)
    grad, = torch.autograd.grad(loss, x, grad_out.to(loss.dtype))
    return loss.detach(), grad


def gfloor(dtype):
    """assert_close_ref floor for CTC gradients: their scale is max |ref| (1 / (N L) for mean), so the
    floor only matters when every gradient is 0; float16 below 6.1e-5 is subnormal."""
    return 6e-5 if dtype == torch.float16 else 1e-6


def loss_grow(T):
    """Tolerance growth for losses over T steps: a sum of T rounded terms."""
    return max(1.0, T / 100)


def grad_grow(T, lp=None):
    """Tolerance growth for gradients over T steps: an occupancy exp(alpha + beta + nll - lp) is only as
    exact as the log-space sums behind it, each step rounding a term as large as |log_probs|: so linear
    in T, and in max |log_probs| beyond 10 (a float32 sum of -1e4 and O(1) terms is exact to ~1e-3 only)."""
    m = 0.0
    if lp is not None:
        v = lp.detach().double().abs()
        v = v[torch.isfinite(v)]
        m = v.max().item() if v.numel() else 0.0
    return max(1.0, T / 10) * max(1.0, m / 10)


def assert_close_grown(actual, ref, dtype, what, grow, floor):
    """assert_close_ref (NaN and inf patterns equal, atol relative to max |ref| but at least floor)
    with the dtype tolerance multiplied by grow."""
    rtol, atol = TOL[dtype]
    a = actual.detach().to("cpu", torch.float64)
    r = ref.detach().to("cpu", torch.float64)
    assert a.shape == r.shape, f"{what}: shape {tuple(a.shape)} != {tuple(r.shape)}"
    assert torch.equal(torch.isnan(a), torch.isnan(r)), f"{what}: NaN pattern differs"
    finite = torch.isfinite(r)
    assert torch.equal(a[~finite & ~torch.isnan(r)], r[~finite & ~torch.isnan(r)]), f"{what}: inf differs"
    scale = max(r[finite].abs().max().item() if finite.any() else 0.0, floor)
    torch.testing.assert_close(a[finite], r[finite], rtol=rtol * grow, atol=atol * grow * scale,
                               msg=lambda m: f"{what} ({dtype}, tolerance x{grow:g}): {m}")


def assert_loss_close(loss, ref, dtype, what, T):
    assert_close_grown(loss, ref, dtype, what, loss_grow(T), floor=1.0)


def assert_grad_close(grad, ref, dtype, what, T, lp=None):
    assert_close_grown(grad, ref, dtype, what, grad_grow(T, lp), floor=gfloor(dtype))


def check_against_torch(lp, targets, il, tl, blank, reduction, zero_infinity, dtype):
    """One call against torch: loss, gradient with an upstream gradient, zero gradient past each input
    length, input unmodified. Returns fastloss's (loss, grad) and the upstream gradient."""
    N = lp.shape[1] if lp.dim() == 3 else 1
    before = lp.clone()
    x = lp.detach().clone().requires_grad_()
    loss = ctc()(x, targets, il, tl, blank=blank, reduction=reduction, zero_infinity=zero_infinity)
    assert loss.dtype == dtype and loss.device == lp.device
    assert loss.shape == ((N,) if reduction == "none" and lp.dim() == 3 else ())
    go = upstream(loss, N)
    ref, ref_grad = ctc_ref(lp, targets, il, tl, blank, reduction, zero_infinity, go)
    T = lp.shape[0]
    assert_loss_close(loss, ref, dtype, f"loss {reduction}", T)
    g, = torch.autograd.grad(loss, x, go.to(loss.dtype))
    assert g.dtype == dtype and g.shape == lp.shape
    assert_grad_close(g, ref_grad, dtype, f"grad {reduction}", T, lp)
    if lp.dim() == 3:
        for n in range(N):
            assert (g[int(il[n]):, n] == 0).all(), f"gradient not 0 past input_lengths[{n}]"
    assert torch.equal(x.detach(), before) and torch.equal(lp, before), "log_probs was modified"
    return loss.detach(), g, go


# ------------------------------------------------------------------------- the main test matrix
# name, T, N, C, S, blank, label pool (repeats), lengths mode, raw (unnormalized) log_probs
CASES = [
    ("basic", 12, 3, 5, 4, 0, None, "random", False),
    ("basic_raw", 12, 3, 5, 4, 0, None, "random", True),
    ("T1", 1, 3, 3, 1, 0, None, "random", False),
    ("full", 20, 4, 6, 7, 0, None, "full", False),
    ("blank_last", 30, 4, 7, 10, 6, None, "random", False),
    ("repeats_blank_mid", 24, 5, 4, 8, 2, 2, "random", False),
    ("one_label_C2", 25, 3, 2, 12, 1, None, "random", False),
    ("edges", 10, 8, 6, 4, 3, None, "edge", False),
    ("edges_raw_repeats", 10, 8, 6, 4, 0, 2, "edge", True),
    ("tight", 15, 4, 5, 7, 0, 2, "tight", False),
    ("vocab1000", 40, 2, 1000, 15, 999, None, "random", False),
    ("batch64", 16, 64, 9, 6, 4, None, "random", False),
    ("C1_no_labels_raw", 7, 3, 1, 0, 0, None, "random", True),
]


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("zero_infinity", [False, True], ids=["zi0", "zi1"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_matches_torch(device, dtype, reduction, zero_infinity, case):
    _, T, N, C, S, blank, pool, lengths, raw = case
    lp, targets, il, tl = make_case(T, N, C, S, blank, pool, lengths, dtype, device, raw)
    check_against_torch(lp, targets, il, tl, blank, reduction, zero_infinity, dtype)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("blank", range(5))
def test_any_blank(device, dtype, blank):
    lp, targets, il, tl = make_case(14, 4, 5, 5, blank, None, "random", dtype, device)
    for red in REDUCTIONS:
        check_against_torch(lp, targets, il, tl, blank, red, False, dtype)
        check_against_torch(lp, concat(targets, tl), il, tl, blank, red, False, dtype)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_zero_lengths_and_impossible_samples(device, dtype):
    """Exact values: input and target length 0 -> -0.0; input length 0, target length > 0 -> inf with
    no gradient; an input one step too short for the target (repeats need a blank between) -> inf and
    (as torch) NaN gradient rows t < input_length, 0 after; zero_infinity -> loss 0 and gradient 0.
    Target length 0 -> -sum_t log_probs[t, blank]. mean divides by max(target length, 1), then averages."""
    lp = make_log_probs(6, 5, 4, dtype, device)
    targets = torch.tensor([[1, 2, 3], [1, 2, 3], [1, 1, 2], [3, 3, 3], [2, 2, 1]], device=device)
    il, tl = [0, 0, 3, 6, 6], [0, 2, 3, 0, 3]  # sample 2 needs 4 steps; sample 4 needs 4
    loss, g = run_ours(lp, targets, il, tl, reduction="none")
    assert loss[0] == 0 and torch.signbit(loss[0]), "input and target length 0: torch gives -0.0"
    assert loss[1] == float("inf") and loss[2] == float("inf")
    expect = -lp[:, 3, 0].double().sum()
    torch.testing.assert_close(loss[3].double(), expect, rtol=TOL[dtype][0], atol=TOL[dtype][1] * 10)
    assert torch.isfinite(loss[4])
    assert (g[:, 0] == 0).all() and (g[:, 1] == 0).all()
    assert g[:3, 2].isnan().all() and (g[3:, 2] == 0).all()
    assert torch.isfinite(g[:, 3]).all() and torch.isfinite(g[:, 4]).all()

    lz, gz = run_ours(lp, targets, il, tl, reduction="none", zero_infinity=True)
    assert lz[1] == 0 and lz[2] == 0
    assert (gz[:, 1] == 0).all() and (gz[:, 2] == 0).all()
    assert torch.equal(lz[[0, 3, 4]], loss[[0, 3, 4]]) and torch.equal(gz[:, [0, 3, 4]], g[:, [0, 3, 4]])

    lens = torch.tensor(tl, dtype=torch.float64, device=device).clamp(min=1)
    rtol, atol = TOL[dtype]
    for zi, per in [(True, lz), (False, loss)]:
        mean, _ = run_ours(lp, targets, il, tl, reduction="mean", zero_infinity=zi)
        total, _ = run_ours(lp, targets, il, tl, reduction="sum", zero_infinity=zi)
        torch.testing.assert_close(mean.double(), (per.double() / lens).mean(), rtol=rtol * 4, atol=atol * 10)
        torch.testing.assert_close(total.double(), per.double().sum(), rtol=rtol * 4, atol=atol * 10)
    for red in REDUCTIONS:
        for zi in [False, True]:
            check_against_torch(lp, targets, il, tl, 0, red, zi, dtype)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_padding_is_ignored(device, reduction):
    """Padded targets past each target length may hold anything (-1, the blank, C, huge): same result."""
    lp, targets, il, tl = make_case(12, 4, 6, 5, 2, None, "random", torch.float32, device)
    tl[1], tl[2] = 2, 0
    il = [max(a, b) for a, b in zip(il, tl)]
    base = run_ours(lp, targets, il, tl, blank=2, reduction=reduction)
    for fill in [-1, 2, 6, 10**9]:
        t = targets.clone()
        for n in range(4):
            t[n, tl[n]:] = fill
        out = run_ours(lp, t, il, tl, blank=2, reduction=reduction)
        assert torch.equal(out[0], base[0]) and torch.equal(out[1], base[1]), f"padding {fill}"


def _target_formats(targets, tl, device):
    N, S = targets.shape
    cat = concat(targets.cpu(), tl)
    wide = torch.full((N, S + 3), 1, dtype=torch.int64)
    wide[:, :S] = targets.cpu()
    wide[:, S:] = -7  # past every target length: ignored
    return {
        "padded_int64": targets,
        "padded_int32": targets.int(),
        "padded_int16": targets.to(torch.int16),
        "padded_int8": targets.to(torch.int8),
        "padded_uint8": targets.to(torch.uint8),
        "padded_transposed": targets.t().contiguous().t(),
        "padded_wider": wide.to(device),
        "padded_column_slice": torch.cat([torch.zeros(N, 1, dtype=torch.int64), wide], 1).to(device)[:, 1:S + 1],
        "concat_int64": cat.to(device),
        "concat_int32": cat.int().to(device),
        "concat_strided": torch.stack([cat, cat + 100], 1).to(device)[:, 0],
        "padded_cpu": targets.cpu(),
        "concat_cpu_int32": cat.int(),
    }


def _length_formats(lengths, device):
    return {
        "list": list(lengths),
        "tuple": tuple(lengths),
        "cpu_int64": torch.tensor(lengths),
        "cpu_int32": torch.tensor(lengths, dtype=torch.int32),
        "device_int64": torch.tensor(lengths, device=device),
        "device_int32": torch.tensor(lengths, dtype=torch.int32, device=device),
        "strided": torch.tensor(lengths).repeat_interleave(2)[::2],
        "list_of_0d_tensors": [torch.tensor(v) for v in lengths],
    }


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_target_and_length_formats(device, reduction, dtype):
    """Padded (N, S) and concatenated 1-D targets of any integer type and layout, on the CPU or the
    log_probs device, and lengths as list / tuple / int32 or int64 tensors anywhere: bitwise the same."""
    lp, targets, il, tl = make_case(15, 4, 6, 5, 0, 3, "random", dtype, device)
    tl[2] = 0
    base = run_ours(lp, targets, il, tl, reduction=reduction)
    check_against_torch(lp, targets, il, tl, 0, reduction, False, dtype)
    for name, t in _target_formats(targets, tl, device).items():
        out = run_ours(lp, t, il, tl, reduction=reduction)
        assert torch.equal(out[0], base[0]) and torch.equal(out[1], base[1]), f"targets {name}"
    cat32 = concat(targets, tl).int()
    for name_i, li in _length_formats(il, device).items():
        for name_t, lt in _length_formats(tl, device).items():
            if name_i != name_t and name_t not in ("list", "device_int32"):
                continue
            for t in (targets, cat32):
                out = run_ours(lp, t, li, lt, reduction=reduction)
                assert torch.equal(out[0], base[0]) and torch.equal(out[1], base[1]), f"lengths {name_i}/{name_t}"


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["batch_first_transposed", "class_slice", "time_stride"])
def test_non_contiguous_log_probs(device, dtype, layout):
    """(N, T, C).transpose(0, 1) (the usual batch-first model output), a class slice of a wider tensor,
    every other time step: torch's result, and bitwise the result of a contiguous copy."""
    T, N, C = 17, 4, 7
    full = make_log_probs(2 * T, N, C + 2, torch.float64, "cpu", raw=True)
    if layout == "batch_first_transposed":
        lp = full[:T, :, :C].log_softmax(-1).transpose(0, 1).to(dtype).to(device).contiguous().transpose(0, 1)
    elif layout == "class_slice":
        lp = full.to(dtype).to(device)[:T, :, 1:C + 1]
    else:
        lp = full.to(dtype).to(device)[::2, :, :C]
    assert not lp.is_contiguous()
    targets = make_targets(N, 5, C, 0).to(device)
    il, tl = make_lengths(targets.cpu(), T, "random")
    for red in REDUCTIONS:
        loss, g, go = check_against_torch(lp, targets, il, tl, 0, red, False, dtype)
        l2, g2 = run_ours(lp.contiguous(), targets, il, tl, reduction=red, grad_out=go)
        assert torch.equal(loss, l2) and torch.equal(g, g2)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_unbatched(device, dtype, reduction):
    """(T, C) log_probs with (S,) targets and one length each ([x], (x,), 0-d or 1-element tensors):
    torch's result; reduction 'none' gives a 0-d loss; equal to the batched N = 1 result. (torch reads
    unbatched 1-D targets as concatenated: their length is the target length.)"""
    T, C = 9, 5
    lp = make_log_probs(T, 1, C, dtype, device)[:, 0]
    t = torch.tensor([1, 3, 3, 2], device=device)
    forms = [([9], [4]), ((8,), (3,)), (torch.tensor(9), torch.tensor(4)), (torch.tensor([7]), torch.tensor([2])),
             (torch.tensor([9], dtype=torch.int32, device=device), torch.tensor([4], dtype=torch.int32)),
             ([6], [0]), (torch.tensor(2, device=device), torch.tensor([1], device=device))]
    for il, tl in forms:
        i, L = int(torch.as_tensor(il).reshape(-1)[0]), int(torch.as_tensor(tl).reshape(-1)[0])
        x = lp.clone().requires_grad_()
        loss = ctc()(x, t[:L], il, tl, reduction=reduction)
        assert loss.shape == () and loss.dtype == dtype
        xr = lp.detach().cpu().double().requires_grad_()
        ref = F.ctc_loss(xr, t[:L].cpu(), [i], [L], reduction=reduction)
        ref_g, = torch.autograd.grad(ref, xr)
        assert_loss_close(loss, ref, dtype, "loss unbatched", T)
        g, = torch.autograd.grad(loss, x)
        assert g.shape == (T, C)
        assert_grad_close(g, ref_g, dtype, "grad unbatched", T)
        lb, gb = run_ours(lp.unsqueeze(1), t[:L].unsqueeze(0), [i], [L], reduction=reduction)
        assert torch.equal(loss.detach(), lb[0] if reduction == "none" else lb)
        assert torch.equal(g, gb[:, 0])


@pytest.mark.parametrize("device", device_params())
def test_unbatched_target_forms(device):
    """Unbatched log_probs take (S,) targets (concatenated: exactly target_length labels, as torch checks)
    or (1, S) padded ones (any target_length <= S), as torch; other shapes refused. Lengths may be numpy
    integers (torch takes them)."""
    T, C = 9, 5
    lp = make_log_probs(T, 1, C, torch.float64, device)[:, 0]
    padded = torch.tensor([[1, 3, 3, 2]], device=device)
    for L in (4, 2, 0):
        ref = F.ctc_loss(lp.cpu(), padded.cpu(), [T], [L], reduction="none")
        assert_loss_close(ctc()(lp, padded, [T], [L], reduction="none"), ref, torch.float64, "(1, S)", T)
        assert_loss_close(ctc()(lp, padded, np.int64(T), [np.int32(L)], reduction="none"), ref, torch.float64,
                          "numpy lengths", T)
    with pytest.raises(RuntimeError):  # torch refuses it too: 4 concatenated labels, target length 2
        F.ctc_loss(lp.cpu(), padded[0].cpu(), [T], [2])
    with pytest.raises(RuntimeError, match="sum\\(target_lengths\\) = 2 labels, got 4"):
        ctc()(lp, padded[0], [T], [2])
    with pytest.raises(RuntimeError, match=r"unbatched log_probs \(T, C\) take targets \(S,\) or \(1, S\)"):
        ctc()(lp, padded.expand(2, 4), [T], [2])
    with pytest.raises(TypeError, match="input_lengths must be a list/tuple of ints"):
        ctc()(lp, padded, [9.0], [2])


# ------------------------------------------------------------------------------ long sequences
# T, N, C, S, blank, dtype, raw, reduction
LONG = [
    (1000, 3, 30, 300, 0, torch.float64, False, "none"),
    (1000, 3, 30, 300, 0, torch.float32, False, "none"),
    (1000, 3, 30, 300, 29, torch.float32, True, "mean"),
    (1000, 3, 30, 300, 0, torch.bfloat16, False, "sum"),
    (1200, 2, 5, 500, 4, torch.float16, False, "none"),
    (2000, 2, 50, 600, 0, torch.float32, False, "none"),
]


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("T,N,C,S,blank,dtype,raw,reduction", LONG, ids=str)
def test_long_sequences(device, T, N, C, S, blank, dtype, raw, reduction):
    """Long inputs and targets (losses in the thousands): within the dtype tolerance (grown with T) of
    torch's float64 result (float32 gradients: 10x closer than torch's own float32); concatenated
    targets bitwise equal to padded ones."""
    check_long(device, T, N, C, S, blank, dtype, raw, reduction)


@requires_cuda
@pytest.mark.parametrize("S,dtype,reduction", [(1500, torch.float32, "none"), (1500, torch.float64, "mean"),
                                               (3500, torch.float32, "sum"), (3500, torch.bfloat16, "none")])
def test_cuda_many_states_per_thread(S, dtype, reduction):
    """CUDA: 2S+1 > 2048 states take K = 4 (S = 1500) and K = 8 (S = 3500) states per thread, and S = 3500
    rows need more than 48 KB of (opt-in) shared memory: the same checks as the long sequences."""
    check_long("cuda", 2 * S + 100, 2, 20, S, 0, dtype, False, reduction)


@requires_cuda
@pytest.mark.parametrize("S,dtype,reduction", [(3055, torch.float32, "sum"), (3070, torch.float32, "none"),
                                               (3062, torch.bfloat16, "none"), (3066, torch.float16, "none"),
                                               (1519, torch.float64, "mean"), (1534, torch.float64, "sum")], ids=str)
def test_cuda_rows_near_48kb_with_static_shared_memory(S, dtype, reduction):
    """CUDA: a longest target whose two state rows (2 (2S + 3) accumulators) stay under 48 KB while the rows
    plus the recursion kernel's static per-warp maxima pass it (S = 3055..3070 with float accumulation,
    1519..1534 in float64) must launch (with the shared-memory opt-in) and match the float64 reference."""
    check_long("cuda", S + S // 8 + 20, 2, 20, S, 0, dtype, False, reduction)


def check_long(device, T, N, C, S, blank, dtype, raw, reduction):
    lp = make_log_probs(T, N, C, dtype, device, raw)
    targets = make_targets(N, S, C, blank)
    il = [T] + [T - 13 * n for n in range(1, N)]
    tl = [S] + [S - 7 * n for n in range(1, N)]
    assert all(needed_length(targets[n], tl[n]) <= il[n] for n in range(N))
    targets = targets.to(device)
    x = lp.clone().requires_grad_()
    loss = ctc()(x, targets, il, tl, blank=blank, reduction=reduction)
    go = upstream(loss, N)
    g, = torch.autograd.grad(loss, x, go.to(dtype))
    ref, ref_g = ctc_ref(lp, targets, il, tl, blank, reduction, False, go)
    assert loss.dtype == dtype and g.dtype == dtype
    assert torch.isfinite(ref).all()
    assert_loss_close(loss, ref, dtype, f"loss {reduction}", T)
    assert_grad_close(g, ref_g, dtype, f"grad {reduction}", T, lp)
    if dtype == torch.float32 and not raw:
        # torch's float32 rounds alpha and beta at their size (~T log C) and its occupancies inherit
        # that (~3e-3 off at T = 1000); fastloss keeps each row relative to its maximum (offsets in
        # double): the claim is a gradient at least 10x closer to float64 than torch's float32.
        xt = lp.detach().cpu().requires_grad_()
        lt = F.ctc_loss(xt, targets.cpu(), il, tl, blank=blank, reduction=reduction)
        gt, = torch.autograd.grad(lt, xt, go.cpu().to(dtype))
        err = (g.detach().cpu().double() - ref_g).abs().max().item()
        err_torch = (gt.double() - ref_g).abs().max().item()
        assert err <= 0.1 * err_torch, f"grad {reduction}: error {err:.3g} vs torch float32's {err_torch:.3g}"
    assert (g[il[-1]:, -1] == 0).all()
    l2, g2 = run_ours(lp, concat(targets, tl), il, tl, blank=blank, reduction=reduction, grad_out=go)
    assert torch.equal(l2, loss.detach()) and torch.equal(g2, g), "concatenated targets differ from padded"


# ------------------------------------------------------------------------------ extreme values
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind", ["peaked", "very_negative_label", "raw_large_positive", "vocab_peaked"])
def test_extreme_values(device, dtype, kind):
    """Very peaked distributions (alignment probabilities like exp(-3000)), a label whose log-probability
    is -1e4, raw log_probs around +5 (exp(lp) in the millions), a peaked 2000-class vocabulary."""
    if kind == "peaked":
        lp, targets, il, tl = make_case(40, 4, 20, 12, 0, None, "random", dtype, device, scale=30.0)
    elif kind == "very_negative_label":
        lp, targets, il, tl = make_case(20, 3, 6, 6, 0, None, "random", torch.float64, device)
        lp[:, :, 3] -= 1e4
        lp = lp.to(dtype)
    elif kind == "raw_large_positive":
        lp, targets, il, tl = make_case(20, 3, 6, 6, 0, None, "random", torch.float64, device, raw=True, scale=3.0)
        lp = (lp + 5.0).to(dtype)
    else:
        lp, targets, il, tl = make_case(30, 2, 2000, 10, 1999, None, "random", dtype, device, scale=10.0)
    blank = 1999 if kind == "vocab_peaked" else 0
    for red in REDUCTIONS:
        check_against_torch(lp, targets, il, tl, blank, red, False, dtype)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_minus_inf_log_probs(device, dtype):
    """-inf entries (a class with probability 0, the blank included): torch's loss (inf where no path
    is left); gradients equal torch's wherever torch's are finite."""
    x = torch.randn(8, 4, 5, dtype=torch.float64)
    x[2, 0, 3] = x[1, 1, 0] = x[:, 2, 2] = -float("inf")
    lp = x.log_softmax(-1).to(dtype).to(device)
    targets = torch.tensor([[1, 3, 4], [3, 3, 1], [2, 1, 1], [4, 2, 4]], device=device)
    il, tl = [8, 8, 8, 7], [3, 3, 3, 3]
    for red in REDUCTIONS:
        loss, g = run_ours(lp, targets, il, tl, reduction=red)
        ref, ref_g = ctc_ref(lp, targets, il, tl, 0, red, False, torch.ones((4,) if red == "none" else ()))
        assert_loss_close(loss, ref, dtype, f"loss {red}", 8)
        keep = torch.isfinite(ref_g)
        assert_grad_close(g.cpu()[keep], ref_g[keep], dtype, f"grad {red}", 8, lp)


# ---------------------------------------------------------------------------------- gradcheck
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("zero_infinity,blank", [(False, 0), (True, 3)], ids=["zi0-blank0", "zi1-blank3"])
def test_gradcheck(device, reduction, zero_infinity, blank):
    """torch's CTC gradient assumes normalized log_probs: through log_softmax it is the true gradient.
    With zero_infinity, sample 3 cannot align (inf -> 0, gradient 0)."""
    T, N, C = 5, 4, 4
    a, b, c = [k for k in range(C) if k != blank]
    targets = torch.tensor([[a, b, b], [c, a, a], [b, c, a], [a, a, c]], device=device)
    il, tl = [5, 5, 3, 5], [3, 2, 1, 3]
    if zero_infinity:
        il[3] = 3  # (a, a, c) needs 4 steps
    x = torch.randn(T, N, C, device=device, dtype=torch.float64, requires_grad=True)

    def fn(inp):
        return ctc()(inp.log_softmax(-1), targets, il, tl, blank=blank, reduction=reduction,
                     zero_infinity=zero_infinity)

    assert torch.autograd.gradcheck(fn, (x,))
    if reduction == "none":  # a random upstream gradient; concatenated targets, tensor lengths
        w = torch.rand(N, device=device, dtype=torch.float64) + 0.5
        cat = concat(targets, tl)
        assert torch.autograd.gradcheck(
            lambda inp: (ctc()(inp.log_softmax(-1), cat, torch.tensor(il), torch.tensor(tl), blank=blank,
                               reduction="none", zero_infinity=zero_infinity) * w).sum(), (x,))
        assert torch.autograd.gradcheck(  # unbatched (T, C)
            lambda inp: ctc()(inp[:, 0].log_softmax(-1), targets[0], torch.tensor(il[0]), torch.tensor(tl[0]),
                              blank=blank, reduction="none"), (x,), fast_mode=True)


@pytest.mark.parametrize("device", device_params())
def test_no_grad_paths(device):
    """No gradient wanted (no_grad, inference_mode, log_probs without requires_grad): the same loss."""
    lp, targets, il, tl = make_case(11, 3, 5, 4, 0, None, "random", torch.float32, device)
    x = lp.clone().requires_grad_()
    for red in REDUCTIONS:
        ref = ctc()(x, targets, il, tl, reduction=red).detach()
        with torch.no_grad():
            out = ctc()(x, targets, il, tl, reduction=red)
        assert not out.requires_grad
        assert torch.equal(out, ref)
        with torch.inference_mode():
            assert torch.equal(ctc()(x, targets, il, tl, reduction=red), ref)
        assert torch.equal(ctc()(lp, targets, il, tl, reduction=red), ref)
        assert_loss_close(ref, ctc_ref(lp, targets, il, tl, 0, red)[0], torch.float32, "loss", 11)


@pytest.mark.parametrize("device", device_params())
def test_backward_twice_retain_graph(device):
    lp, targets, il, tl = make_case(11, 3, 5, 4, 0, None, "random", torch.float32, device)
    x = lp.clone().requires_grad_()
    loss = ctc()(x, targets, il, tl, reduction="sum")
    loss.backward(retain_graph=True)
    g1 = x.grad.clone()
    loss.backward()
    torch.testing.assert_close(x.grad, 2 * g1)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_autocast(device, dtype):
    """Under autocast ctc_loss runs in float32 as torch's does (a float32 loss, also for half inputs)."""
    lp, targets, il, tl = make_case(10, 3, 6, 4, 0, None, "random", dtype, device)
    with torch.autocast(device, dtype=torch.bfloat16):
        ours = ctc()(lp, targets, il, tl)
        ref = F.ctc_loss(lp, targets, il, tl)
    assert ours.dtype == ref.dtype == torch.float32
    assert_loss_close(ours, ctc_ref(lp, targets, il, tl)[0], torch.float32, "loss", 10)


# -------------------------------------------------------------------------------------- modules
MODULE_CASES = [{}, {"blank": 3}, {"reduction": "sum"}, {"reduction": "none", "zero_infinity": True},
                {"blank": 5, "reduction": "mean", "zero_infinity": True}]


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("kwargs", MODULE_CASES, ids=str)
def test_module(device, kwargs):
    mod, ref_mod = fastloss.CTCLoss(**kwargs), torch.nn.CTCLoss(**kwargs)
    assert isinstance(mod, torch.nn.CTCLoss) and "forward" in vars(fastloss.CTCLoss)
    assert (mod.blank, mod.reduction, mod.zero_infinity) == (ref_mod.blank, ref_mod.reduction, ref_mod.zero_infinity)
    assert mod.state_dict().keys() == ref_mod.state_dict().keys()
    blank = kwargs.get("blank", 0)
    lp, targets, il, tl = make_case(12, 4, 6, 4, blank, None, "edge" if kwargs.get("zero_infinity") else "random",
                                    torch.float32, device)
    x = lp.clone().requires_grad_()
    out = mod(x, targets, il, tl)
    fn = ctc()(x, targets, il, tl, blank=blank, reduction=kwargs.get("reduction", "mean"),
               zero_infinity=kwargs.get("zero_infinity", False))
    assert torch.equal(out, fn)
    ref = ref_mod(lp.cpu().double(), targets.cpu(), il, tl)
    assert_loss_close(out, ref, torch.float32, "loss module", 12)
    go = torch.rand_like(out) + 0.5
    g, = torch.autograd.grad(out, x, go)
    xr = lp.cpu().double().requires_grad_()
    rg, = torch.autograd.grad(ref_mod(xr, targets.cpu(), il, tl), xr, go.cpu().double())
    assert_grad_close(g, rg, torch.float32, "grad module", 12)


def test_public_names():
    assert "ctc_loss" in fastloss.functional.__all__ and "CTCLoss" in fastloss.__all__


# ------------------------------------------------------------------------------------ bad input
def _bad_cases(device):
    lp = torch.randn(6, 3, 5, device=device).log_softmax(-1)
    t = torch.tensor([[1, 2, 2], [3, 4, 1], [1, 1, 4]], device=device)
    il, tl = [6, 6, 5], [3, 2, 1]

    def with_t(i, j, v):
        bad = t.clone()
        bad[i, j] = v
        return bad

    cat = concat(t, tl)
    f = torch.float32
    return {
        # name: (call on (module), text our message contains)
        "target == C": (lambda m: m.ctc_loss(lp, with_t(1, 1, 5), il, tl), "targets"),
        "target > C": (lambda m: m.ctc_loss(lp, with_t(0, 2, 1000), il, tl), "targets"),
        "negative target": (lambda m: m.ctc_loss(lp, with_t(2, 0, -1), il, tl), "targets"),
        "target == blank": (lambda m: m.ctc_loss(lp, with_t(0, 0, 0), il, tl), "targets"),
        "target == blank (blank 2)": (lambda m: m.ctc_loss(lp, t, il, tl, blank=2), "targets"),
        "concatenated target == C": (lambda m: m.ctc_loss(lp, torch.cat([cat[:-1], cat.new_tensor([5])]), il, tl),
                                     "targets"),
        "concatenated target == blank": (lambda m: m.ctc_loss(lp, torch.cat([cat.new_tensor([0]), cat[1:]]), il,
                                                              tl), "targets"),
        "int32 target out of range": (lambda m: m.ctc_loss(lp, with_t(1, 0, 7).int(), il, tl), "targets"),
        "blank == C": (lambda m: m.ctc_loss(lp, t, il, tl, blank=5), "blank"),
        "negative blank": (lambda m: m.ctc_loss(lp, t, il, tl, blank=-1), "blank"),
        "input length > T": (lambda m: m.ctc_loss(lp, t, [6, 7, 5], tl), "input_lengths"),
        "negative input length": (lambda m: m.ctc_loss(lp, t, [6, -1, 5], tl), "input_lengths"),
        "target length > S": (lambda m: m.ctc_loss(lp, t, il, [3, 4, 1]), "target_lengths"),
        "negative target length": (lambda m: m.ctc_loss(lp, t, il, [3, -1, 1]), "target_lengths"),
        "input_lengths count": (lambda m: m.ctc_loss(lp, t, [6, 6], tl), "input_lengths"),
        "input_lengths count (tensor)": (lambda m: m.ctc_loss(lp, t, torch.tensor([6, 6, 6, 6]), tl),
                                         "input_lengths"),
        "target_lengths count": (lambda m: m.ctc_loss(lp, t, il, [3, 2]), "target_lengths"),
        "1-D targets too short": (lambda m: m.ctc_loss(lp, cat[:-1], il, tl), "targets"),
        "1-D targets too long": (lambda m: m.ctc_loss(lp, torch.cat([cat, cat[:1]]), il, tl), "targets"),
        "float input_lengths tensor": (lambda m: m.ctc_loss(lp, t, torch.tensor(il, dtype=f), torch.tensor(tl)),
                                       "input_lengths"),
        "float target_lengths tensor": (lambda m: m.ctc_loss(lp, t, torch.tensor(il), torch.tensor(tl, dtype=f)),
                                        "target_lengths"),
        "float input_lengths list": (lambda m: m.ctc_loss(lp, t, [6.0, 6.0, 5.0], tl), "input_lengths"),
        "float targets": (lambda m: m.ctc_loss(lp, t.float(), il, tl), "targets"),
        "padded targets batch mismatch": (lambda m: m.ctc_loss(lp, t[:2], il, tl), "targets"),
        "3-D targets": (lambda m: m.ctc_loss(lp, t.unsqueeze(0), il, tl), "targets"),
        "empty T": (lambda m: m.ctc_loss(lp[:0], t, [0, 0, 0], tl), "log_probs tensor must not be empty"),
        "empty N": (lambda m: m.ctc_loss(lp[:, :0], t[:0], [], []), "log_probs tensor must not be empty"),
        "4-D log_probs": (lambda m: m.ctc_loss(lp.unsqueeze(0), t, il, tl), "log_probs"),
        "unknown reduction": (lambda m: m.ctc_loss(lp, t, il, tl, reduction="avg"), "not a valid value for reduction"),
    }


TORCH_ACCEPTS = {"target == blank", "target == blank (blank 2)", "concatenated target == blank", "float targets",
                 "negative target", "target > C", "target == C", "concatenated target == C",
                 "int32 target out of range"}  # torch silently computes something (or reads out of bounds)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("case", list(_bad_cases("cpu")))
def test_bad_input(device, case):
    call, text = _bad_cases(device)[case]
    with pytest.raises(BAD + (TypeError,), match=text):
        call_and_check(lambda: call(fastloss.functional))
    if device == "cpu" and case not in TORCH_ACCEPTS:
        with pytest.raises(BAD + (TypeError,)):
            call(F)  # torch refuses the same input


def test_torch_accepts_blank_as_target():
    """Documents the deviation: torch silently computes a loss for a target equal to the blank."""
    lp = torch.randn(6, 1, 5, dtype=torch.float64).log_softmax(-1)
    assert torch.isfinite(F.ctc_loss(lp, torch.tensor([[0, 1]]), [6], [2]))
    with pytest.raises(BAD, match="targets"):
        ctc()(lp, torch.tensor([[0, 1]]), [6], [2])


# ------------------------------------------------------------------------------------ CUDA only
@requires_cuda
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cuda_lengths_and_targets_anywhere(reduction):
    """On CUDA: lengths as CUDA tensors (int32 / int64), targets on the CPU or the GPU: bitwise equal."""
    lp, targets, il, tl = make_case(40, 8, 12, 10, 0, None, "random", torch.float32, "cuda")
    base = run_ours(lp, targets, il, tl, reduction=reduction)
    for dt in (torch.int32, torch.int64):
        li, lt = torch.tensor(il, dtype=dt, device="cuda"), torch.tensor(tl, dtype=dt, device="cuda")
        for t in (targets, targets.cpu(), concat(targets, tl), concat(targets, tl).cpu().int()):
            out = run_ours(lp, t, li, lt, reduction=reduction)
            assert torch.equal(out[0], base[0]) and torch.equal(out[1], base[1])
    check_against_torch(lp, targets, torch.tensor(il, device="cuda"), torch.tensor(tl, device="cuda"), 0, reduction,
                        False, torch.float32)


@requires_cuda
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cuda_cudnn_eligible_inputs(reduction):
    """The inputs torch sends to cuDNN (blank 0, int32 concatenated CPU targets, every input length == T,
    float32): fastloss agrees with torch's CUDA result and with the float64 reference."""
    T, N, C, S = 50, 8, 20, 12
    lp, targets, _, tl = make_case(T, N, C, S, 0, None, "random", torch.float32, "cuda")
    il = [T] * N
    cat = concat(targets.cpu(), tl).int()
    check_against_torch(lp, cat, il, tl, 0, reduction, False, torch.float32)
    x = lp.clone().requires_grad_()
    ref = F.ctc_loss(x, cat, torch.tensor(il, dtype=torch.int32), torch.tensor(tl, dtype=torch.int32),
                     reduction=reduction)
    g_ref, = torch.autograd.grad(ref, x, torch.ones_like(ref))
    l2, g2 = run_ours(lp, cat, il, tl, reduction=reduction)
    torch.testing.assert_close(l2, ref.detach(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(g2, g_ref, rtol=0, atol=1e-4)  # torch's own cuDNN-vs-native test: atol 1e-4


@requires_cuda
def test_cuda_bad_target_leaves_context_usable():
    """A bad target on CUDA (CUDA targets and lengths) raises, with no device-side assert: CUDA keeps working."""
    lp, targets, il, tl = make_case(20, 4, 6, 5, 0, None, "random", torch.float32, "cuda")
    bad = targets.clone()
    bad[0, 0] = 6
    with pytest.raises(BAD, match="targets"):
        call_and_check(lambda: ctc()(lp, bad, torch.tensor(il, device="cuda"), torch.tensor(tl, device="cuda")))
    bad[0, 0] = 0
    with pytest.raises(BAD, match="targets"):
        call_and_check(lambda: ctc()(lp, bad, il, tl))
    check_against_torch(lp, targets, il, tl, 0, "mean", False, torch.float32)


@requires_cuda
def test_cuda_targets_on_other_device():
    """log_probs on the CPU with CUDA targets is refused."""
    lp, targets, il, tl = make_case(10, 2, 5, 3, 0, None, "random", torch.float32, "cpu")
    with pytest.raises(BAD):
        ctc()(lp, targets.cuda(), il, tl)


@requires_cuda
def test_cuda_graph_capture_refused():
    """Documented limitation (as torch's CUDA ctc_loss): the lengths are read on the host per call, so CUDA
    graph capture raises a clear error instead of capturing a copy from a temporary host buffer."""
    lp, targets, il, tl = make_case(20, 2, 6, 5, 0, None, "random", torch.float32, "cuda")
    g = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="graph capture is not supported"):
        with torch.cuda.graph(g):
            ctc()(lp, targets, il, tl)
    check_against_torch(lp, targets, il, tl, 0, "mean", False, torch.float32)  # CUDA still works
