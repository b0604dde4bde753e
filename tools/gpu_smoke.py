"""One tiny synchronized call per fastloss kernel variant, each checked against torch in float64 on the CPU.

    python tools/gpu_smoke.py [--device cuda|cpu] [--only TEXT] [--list]

For the GPU check (tools/gpu_check.sh): it reaches every CUDA kernel variant once, fast, and says which
one is broken. Every family x dtype (float64, float32, bfloat16, float16) x reduction, forward and
backward; every cross-entropy row configuration (ce_config 0..3 and caps on the shared-memory cache,
small and large C, aligned and unaligned rows, K-dim inputs, ignore_index, smoothing, weights,
probability targets), nll_loss, CTC (K = 1, 2, 4, 8 states per thread, > 48 KB of shared memory),
every margin_rows tier, grad_scale in place and out of place, and target validation on and off.

Each case runs in its own try/except and synchronizes, so an asynchronous CUDA error is charged to the
case that caused it; one line per case, `ok   family case` or `FAIL family case: error`, then a count
per family and a total. Exit code 1 when a case failed (2 when the CUDA context was lost: the cases
after that one cannot run). The reference is torch's own loss on the same (rounded) values upcast to
float64 on the CPU; the tolerance is loose (it is a smoke test: tests/ holds the tight checks).
On the CPU (--device cpu) the same cases run the CPU kernels (the CUDA-only switches are no-ops there).
"""
import argparse
import inspect
import sys
import time
import traceback

import torch

import fastloss

Fl = fastloss.functional
TF = fastloss.functional._TORCH  # torch's own functions, taken before any fastloss.patch()
ops = torch.ops.fastloss

DTYPES = {"f64": torch.float64, "f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
# |fastloss - float64 reference| <= TOL * (|reference| + max |reference|): the reference sees the same
# rounded inputs, so what is left is fastloss's internal and output rounding.
TOL = {torch.float64: 1e-7, torch.float32: 1e-4, torch.bfloat16: 4e-2, torch.float16: 1e-2}
REDUCTIONS = ["none", "mean", "sum"]

DEV = "cuda"
RESULTS = []  # (family, case, ok)


class ContextLost(Exception):
    pass


# ------------------------------------------------------------------------------------------ helpers
def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def set_option(name, value):
    """fastloss's process-wide switch; returns the previous value (None where the option is unknown)."""
    try:
        return int(ops._set_option(name, int(value)))
    except Exception:  # noqa: BLE001 - an option renamed or removed: the case says so when it matters
        return None


def check_errors():
    """Errors fastloss reports later (deferred target validation), where this build has that."""
    if hasattr(fastloss, "check_errors"):
        fastloss.check_errors()


def ref_of(a):
    """The CPU float64 twin of an argument (tensors only; same requires_grad)."""
    if isinstance(a, torch.Tensor):
        r = a.detach().cpu()
        if r.is_floating_point():
            r = r.double()
        return r.requires_grad_(a.requires_grad)
    return a


def assert_near(what, got, ref, tol, floor=0.0):
    """got within tol of the float64 reference rounded to got's dtype (so that both overflow alike and
    a subnormal rounds alike); `floor`: an absolute error that is rounding noise (a gradient that is
    zero in exact arithmetic, e.g. of a cosine between 1-element rows)."""
    dtype = got.dtype
    got = got.detach().cpu().double()
    ref = ref.detach().cpu()
    if dtype.is_floating_point and dtype != torch.float64:
        ref = ref.to(dtype)
        floor = max(floor, 2 * torch.finfo(dtype).smallest_normal * torch.finfo(dtype).eps)  # subnormal steps
    ref = ref.double()
    if got.shape != ref.shape:
        raise AssertionError(f"{what}: shape {tuple(got.shape)} != reference {tuple(ref.shape)}")
    gn, rn = torch.isnan(got), torch.isnan(ref)
    if not torch.equal(gn, rn):
        raise AssertionError(f"{what}: NaN at {int((gn & ~rn).sum())} places the reference has none, "
                             f"missing at {int((rn & ~gn).sum())}")
    fin = torch.isfinite(ref)
    inf = ~fin & ~rn
    if not torch.equal(got[inf], ref[inf]) or not torch.isfinite(got[fin]).all():
        raise AssertionError(f"{what}: infinities differ from the reference")
    if fin.any():
        g, r = got[fin], ref[fin]
        scale = r.abs().max().item()
        err = (g - r).abs()
        bound = tol * (r.abs() + scale) + max(floor, 1e-300)
        if (err > bound).any():
            i = int(torch.argmax(err / bound))
            raise AssertionError(f"{what}: max error {err.max().item():.3g} (max |ref| {scale:.3g}, tol {tol:g}); "
                                 f"worst at {i}: {g[i].item():.6g} vs {r[i].item():.6g}")


def grad_output(loss, red):
    """none: a random factor per element; mean: 1 (the factor-1 fast path); sum: 1.7 (a real scaling)."""
    if red == "none" or loss.dim() > 0:
        return torch.rand(loss.shape, dtype=torch.float64).add_(0.5).to(DEV, loss.dtype)
    return torch.full((), 1.0 if red == "mean" else 1.7, dtype=loss.dtype, device=DEV)


def compare(fast, ref, args, kwargs, dtype, red, tol=None):
    """fast(*args, **kwargs) against ref(*float64 CPU twins): the loss, then every input gradient."""
    tol = tol or TOL[dtype]
    # rounding noise of O(1) values in dtype, per element of a mean
    n = args[0].numel() if red == "mean" and isinstance(args[0], torch.Tensor) else 1
    floor = 8 * torch.finfo(dtype).eps / max(n, 1)
    loss = fast(*args, **kwargs)
    rargs = [ref_of(a) for a in args]
    rkw = {k: ref_of(v) for k, v in kwargs.items()}
    rloss = ref(*rargs, **rkw)
    assert_near("loss", loss, rloss, tol, floor)
    diff = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad]
    diff_kw = [k for k, v in kwargs.items() if isinstance(v, torch.Tensor) and v.requires_grad]
    if not diff and not diff_kw:
        return
    go = grad_output(loss, red)
    grads = torch.autograd.grad(loss, [args[i] for i in diff] + [kwargs[k] for k in diff_kw], go)
    rgrads = torch.autograd.grad(rloss, [rargs[i] for i in diff] + [rkw[k] for k in diff_kw], ref_of(go))
    for name, g, r in zip([f"grad[{i}]" for i in diff] + [f"grad[{k}]" for k in diff_kw], grads, rgrads):
        assert_near(name, g, r, tol, floor)


def randn(*shape, dtype, offset=0, scale=1.0, shift=0.0, grad=True):
    """A (rows, C) / 1-D tensor on DEV; offset 1 takes it out of a wider buffer (rows and start not
    16-byte aligned)."""
    if offset:
        if len(shape) == 1:
            base = torch.randn(shape[0] + offset, dtype=torch.float64)[offset:]
        else:
            base = torch.randn(*shape[:-1], shape[-1] + offset, dtype=torch.float64)[..., offset:]
        t = (base * scale + shift).to(DEV, dtype)
        if len(shape) == 1:
            t = torch.empty(shape[0] + offset, device=DEV, dtype=dtype)[offset:].copy_(t)
        else:
            t = torch.empty(*shape[:-1], shape[-1] + offset, device=DEV, dtype=dtype)[..., offset:].copy_(t)
    else:
        t = (torch.randn(*shape, dtype=torch.float64) * scale + shift).to(DEV, dtype)
    return t.requires_grad_(grad)


def case(family, name, fn):
    """Run one case: fn() then a device synchronization, every error caught and charged to it."""
    t0 = time.perf_counter()
    try:
        note = fn()
        sync()
        RESULTS.append((family, name, True))
        print(f"ok   {family} {name}", flush=True)
        if isinstance(note, str):
            print(f"     {note}", flush=True)
    except Exception as e:  # noqa: BLE001 - a failure is reported, the next case runs
        RESULTS.append((family, name, False))
        msg = " ".join(f"{type(e).__name__}: {e}".split())
        print(f"FAIL {family} {name}: {msg[:600]}", flush=True)
        if not isinstance(e, AssertionError):
            tb = traceback.extract_tb(e.__traceback__)
            print("     at " + " <- ".join(f"{f.name}:{f.lineno}" for f in reversed(tb[-3:])), flush=True)
        if DEV == "cuda" and not context_alive():
            raise ContextLost(f"{family} {name}") from e
    finally:
        dt = time.perf_counter() - t0
        if dt > 5:
            print(f"     ({dt:.1f} s)", flush=True)


def context_alive():
    try:
        torch.cuda.synchronize()
        (torch.ones(4, device="cuda") + 1).sum().item()
        return True
    except Exception:  # noqa: BLE001
        return False


def supports(fn, kw):
    try:
        return kw in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


# ------------------------------------------------------------------------------------------ families
def pointwise_cases(only):
    """The pointwise kernel: every elementwise loss; aligned / misaligned (offset 1) data, vector
    tails (4099), one element, a multi-block reduction (300007), broadcast weights."""
    fam = "regression"
    for dn, dt in DTYPES.items():
        for red in REDUCTIONS:
            for size, off in [(4099, 0), (4099, 1), (1, 0), (300007, 0)]:
                if size == 300007 and dt in (torch.float64,) and red == "none":
                    continue
                tag = f"{dn} {red} n{size}{' unaligned' if off else ''}"

                def inputs():
                    return randn(size, dtype=dt, offset=off), randn(size, dtype=dt, offset=off)

                def reg(name, kw, w=False):
                    def run():
                        x, y = inputs()
                        kws = dict(kw, reduction=red)
                        if w and supports(TF[name], "weight"):
                            kws["weight"] = randn(size, dtype=dt, offset=off, grad=False).abs()
                        compare(getattr(Fl, name), TF[name], [x, y], kws, dt, red)
                    return run

                for name, kw, w in [("l1_loss", {}, False), ("l1_loss", {}, True), ("mse_loss", {}, False),
                                    ("mse_loss", {}, True), ("smooth_l1_loss", {"beta": 0.5}, False),
                                    ("smooth_l1_loss", {"beta": 0.0}, False), ("huber_loss", {"delta": 0.7}, False),
                                    ("huber_loss", {"delta": 0.7}, True)]:
                    n = f"{name}{' weight' if w else ''}{' beta0' if kw.get('beta') == 0.0 else ''} {tag}"
                    if only(fam, n):
                        case(fam, n, reg(name, kw, w=w))

                def soft_margin():
                    x = randn(size, dtype=dt, offset=off)
                    s = torch.sign(torch.randn(size, dtype=torch.float64)).to(DEV, dt)
                    compare(Fl.soft_margin_loss, TF["soft_margin_loss"], [x, s], {"reduction": red}, dt, red)

                def kl(log_target):
                    def run():
                        x = randn(size, dtype=dt, offset=off, scale=0.5, shift=-1.0)
                        t = (torch.rand(size, dtype=torch.float64) + 0.05)
                        t = (t.log() if log_target else t).to(DEV, dt).requires_grad_()
                        r = "batchmean" if red == "mean" else red

                        def ref(x_, t_, reduction, log_target):
                            if reduction != "batchmean":
                                return TF["kl_div"](x_, t_, reduction=reduction, log_target=log_target)
                            # torch's batchmean is sum() in the input's dtype (float16 overflows at n300007),
                            # then the division: the same here
                            total = TF["kl_div"](x_, t_, reduction="sum", log_target=log_target)
                            return total.to(dt).double() / x_.size(0)
                        compare(Fl.kl_div, ref, [x, t], {"reduction": r, "log_target": log_target}, dt, red)
                    return run

                for n, fn in [(f"soft_margin_loss {tag}", soft_margin), (f"kl_div {tag}", kl(False)),
                              (f"kl_div log_target {tag}", kl(True))]:
                    if only(fam, n):
                        case(fam, n, fn)

                # margin_ranking and hinge_embedding: pointwise kernels, embedding family in the docs
                def margin_ranking():
                    x, y = inputs()
                    s = torch.sign(torch.randn(size, dtype=torch.float64)).to(DEV, dt)
                    compare(Fl.margin_ranking_loss, TF["margin_ranking_loss"], [x, y, s],
                            {"margin": 0.1, "reduction": red}, dt, red)

                def hinge():
                    x = randn(size, dtype=dt, offset=off)
                    s = torch.sign(torch.randn(size, dtype=torch.float64)).to(DEV, dt)
                    compare(Fl.hinge_embedding_loss, TF["hinge_embedding_loss"], [x, s],
                            {"margin": 0.8, "reduction": red}, dt, red)

                for n, fn in [(f"margin_ranking_loss {tag}", margin_ranking), (f"hinge_embedding_loss {tag}", hinge)]:
                    if only("embedding", n):
                        case("embedding", n, fn)


def probabilistic_cases(only):
    """BCE (probabilities, logits with weight / pos_weight broadcast from (C,)), poisson_nll, gaussian_nll
    (var full, (N, 1) broadcast, scalar-like), multilabel_soft_margin, sigmoid_focal."""
    fam = "probabilistic"
    for dn, dt in DTYPES.items():
        for red in REDUCTIONS:
            for (N, C), off in [((37, 111), 0), ((37, 111), 1), ((1, 1), 0), ((129, 2048), 0)]:
                tag = f"{dn} {red} {N}x{C}{' unaligned' if off else ''}"

                def xt(prob_input=False):
                    x = randn(N, C, dtype=dt, offset=off)
                    if prob_input:
                        x = torch.sigmoid(x.detach()).requires_grad_()
                    t = torch.rand(N, C, dtype=torch.float64).to(DEV, dt).requires_grad_()
                    return x, t

                def bce(weighted):
                    def run():
                        x, t = xt(prob_input=True)
                        kw = {"reduction": red}
                        if weighted:
                            kw["weight"] = (torch.rand(N, C, dtype=torch.float64) + 0.5).to(DEV, dt)
                        compare(Fl.binary_cross_entropy, TF["binary_cross_entropy"], [x, t], kw, dt, red)
                    return run

                def bce_logits(weight, pos_weight):
                    def run():
                        x, t = xt()
                        kw = {"reduction": red}
                        src = torch.empty(C + 1, device=DEV, dtype=dt)[1:]  # offset 1: a misaligned broadcast source
                        src.copy_((torch.rand(C, dtype=torch.float64) + 0.5).to(DEV, dt))
                        if weight:
                            kw["weight"] = src
                        if pos_weight:
                            kw["pos_weight"] = src.flip(0).contiguous() if weight else src
                        compare(Fl.binary_cross_entropy_with_logits, TF["binary_cross_entropy_with_logits"], [x, t],
                                kw, dt, red)
                    return run

                def poisson(log_input, full):
                    def run():
                        x = randn(N, C, dtype=dt, offset=off, scale=0.5)
                        if not log_input:
                            x = (x.detach().abs() + 0.1).requires_grad_()
                        t = (torch.rand(N, C, dtype=torch.float64) * 4).to(DEV, dt).requires_grad_()
                        compare(Fl.poisson_nll_loss, TF["poisson_nll_loss"], [x, t],
                                {"log_input": log_input, "full": full, "reduction": red}, dt, red)
                    return run

                def gaussian(var_shape, full):
                    def run():
                        x, t = xt()
                        v = (torch.rand(*var_shape, dtype=torch.float64) + 0.2).to(DEV, dt).requires_grad_()
                        compare(Fl.gaussian_nll_loss, TF["gaussian_nll_loss"], [x, t, v],
                                {"full": full, "reduction": red}, dt, red)
                    return run

                def mlsm():
                    x = randn(N, C, dtype=dt, offset=off)
                    t = (torch.rand(N, C, dtype=torch.float64) > 0.5).to(DEV, dt)
                    w = (torch.rand(C, dtype=torch.float64) + 0.5).to(DEV, dt)
                    compare(Fl.multilabel_soft_margin_loss, TF["multilabel_soft_margin_loss"], [x, t],
                            {"weight": w, "reduction": red}, dt, red)

                def focal(alpha, gamma):
                    def run():
                        x, t = xt()
                        compare(Fl.sigmoid_focal_loss, TF["sigmoid_focal_loss"], [x, t],
                                {"alpha": alpha, "gamma": gamma, "reduction": red}, dt, red)
                    return run

                for n, fn in [(f"binary_cross_entropy {tag}", bce(False)),
                              (f"binary_cross_entropy weight {tag}", bce(True)),
                              (f"bce_with_logits {tag}", bce_logits(False, False)),
                              (f"bce_with_logits weight+pos_weight(C,) {tag}", bce_logits(True, True)),
                              (f"bce_with_logits pos_weight(C,) {tag}", bce_logits(False, True)),
                              (f"poisson_nll log_input {tag}", poisson(True, False)),
                              (f"poisson_nll full {tag}", poisson(False, True)),
                              (f"gaussian_nll var(N,C) full {tag}", gaussian((N, C), True)),
                              (f"gaussian_nll var(N,1) {tag}", gaussian((N, 1), False)),
                              (f"multilabel_soft_margin weight {tag}", mlsm),
                              (f"sigmoid_focal {tag}", focal(0.25, 2.0)),
                              (f"sigmoid_focal alpha-1 gamma1.5 {tag}", focal(-1.0, 1.5))]:
                    if only(fam, n):
                        case(fam, n, fn)


def embedding_cases(only):
    """The row kernels: triplet (p = 1, 2, inf, 1.5; swap), triplet_with_distance (default and
    PairwiseDistance), cosine_embedding; vector rows (D % 8 == 0), odd D, one row, misaligned rows."""
    fam = "embedding"
    for dn, dt in DTYPES.items():
        for red in REDUCTIONS:
            # (1, 3): one row (not (1, 1): a cosine between 1-element rows has a zero gradient in exact
            # arithmetic, and only rounding noise to compare)
            for (N, D), off in [((9, 512), 0), ((9, 512), 1), ((5, 33), 0), ((1, 3), 0), ((3, 2050), 0)]:
                tag = f"{dn} {red} {N}x{D}{' unaligned' if off else ''}"

                def triplet(p, swap):
                    def run():
                        a, pos, neg = (randn(N, D, dtype=dt, offset=off) for _ in range(3))
                        compare(Fl.triplet_margin_loss, TF["triplet_margin_loss"], [a, pos, neg],
                                {"p": p, "swap": swap, "margin": 0.5, "reduction": red}, dt, red)
                    return run

                def with_distance(pn):
                    def run():
                        a, pos, neg = (randn(N, D, dtype=dt, offset=off) for _ in range(3))
                        kw = {"swap": True, "reduction": red}
                        if pn is not None:
                            kw["distance_function"] = torch.nn.PairwiseDistance(p=pn)
                        compare(Fl.triplet_margin_with_distance_loss, TF["triplet_margin_with_distance_loss"],
                                [a, pos, neg], kw, dt, red)
                    return run

                def cosine():
                    a, b = randn(N, D, dtype=dt, offset=off), randn(N, D, dtype=dt, offset=off)
                    t = torch.tensor([1.0, -1.0] * N, dtype=torch.float64)[:N].to(DEV, dt)
                    compare(Fl.cosine_embedding_loss, TF["cosine_embedding_loss"], [a, b, t],
                            {"margin": 0.1, "reduction": red}, dt, red)

                cases = [(f"triplet p={p}{' swap' if s else ''} {tag}", triplet(p, s))
                         for p, s in [(2.0, False), (1.0, True), (float("inf"), False), (1.5, True)]]
                cases += [(f"triplet_with_distance default {tag}", with_distance(None)),
                          (f"triplet_with_distance PairwiseDistance(p=1) {tag}", with_distance(1.0)),
                          (f"cosine_embedding {tag}", cosine)]
                for n, fn in cases:
                    if only(fam, n):
                        case(fam, n, fn)


def class_target(rows_shape, C, ignore_rows=(1,), ignore_index=-100, dtype=torch.int64):
    t = torch.randint(0, C, rows_shape)
    flat = t.view(-1)
    for r in ignore_rows:
        if r < flat.numel():
            flat[r] = ignore_index
    return t.to(DEV, dtype) if dtype != torch.uint8 else t.clamp(0, 255).to(DEV, dtype)


def cross_entropy_cases(only):
    """Every dtype x reduction (class targets with weight, smoothing, ignore_index; probability targets;
    K-dim inputs; uint8 targets; nll_loss), then every row configuration: ce_config 0..3 (warp, block256,
    block1024, 2-block cluster) x shared-memory cache caps x C small / large x aligned / unaligned rows."""
    fam = "cross_entropy"
    CE, TCE = Fl.cross_entropy, TF["cross_entropy"]
    for dn, dt in DTYPES.items():
        for red in REDUCTIONS:
            tag = f"{dn} {red}"

            def classes(C, shape=None, smoothing=0.1, weighted=True, ignore_index=-100, tdtype=torch.int64):
                def run():
                    shp = shape or (6, C)
                    x = randn(*shp, dtype=dt)
                    rows = (shp[0],) + tuple(shp[2:])
                    t = class_target(rows, C, ignore_rows=(1,) if ignore_index == -100 else (), dtype=tdtype)
                    if ignore_index != -100:
                        t.view(-1)[2] = ignore_index
                    kw = {"reduction": red, "label_smoothing": smoothing, "ignore_index": ignore_index}
                    if weighted:
                        kw["weight"] = (torch.rand(C, dtype=torch.float64) + 0.5).to(DEV, dt)
                    ref = (lambda x_, t_, **k: TCE(x_, t_.long(), **k)) if tdtype == torch.uint8 else TCE
                    compare(CE, ref, [x, t], kw, dt, red)
                return run

            def probs(C, shape=None, target_grad=False, weighted=True):
                def run():
                    shp = shape or (6, C)
                    x = randn(*shp, dtype=dt)
                    q = torch.randn(*shp, dtype=torch.float64).softmax(1).to(DEV, dt).requires_grad_(target_grad)
                    kw = {"reduction": red, "label_smoothing": 0.05}
                    if weighted:
                        kw["weight"] = (torch.rand(C, dtype=torch.float64) + 0.5).to(DEV, dt)
                    compare(CE, TCE, [x, q], kw, dt, red)
                return run

            def nll(shape, weighted):
                def run():
                    C = shape[1]
                    x = randn(*shape, dtype=dt, scale=0.5, shift=-2.0)
                    t = class_target((shape[0],) + tuple(shape[2:]), C)
                    kw = {"reduction": red}
                    if weighted:
                        kw["weight"] = (torch.rand(C, dtype=torch.float64) + 0.5).to(DEV, dt)
                    compare(Fl.nll_loss, TF["nll_loss"], [x, t], kw, dt, red)
                return run

            for n, fn in [(f"class weight+smoothing+ignore C131 {tag}", classes(131)),
                          (f"class plain C5 {tag}", classes(5, smoothing=0.0, weighted=False)),
                          (f"class ignore_index=3 C40 {tag}", classes(40, ignore_index=3)),
                          (f"class uint8 target C200 {tag}", classes(200, tdtype=torch.uint8)),
                          (f"class K-dim (2,7,3,5) {tag}", classes(7, shape=(2, 7, 3, 5))),
                          (f"prob target C131 {tag}", probs(131)),
                          (f"prob target grad C131 {tag}", probs(131, target_grad=True)),
                          (f"prob target K-dim (2,7,3,5) {tag}", probs(7, shape=(2, 7, 3, 5), weighted=False)),
                          (f"nll_loss weight (6,50) {tag}", nll((6, 50), True)),
                          (f"nll_loss K-dim (2,7,3,5) {tag}", nll((2, 7, 3, 5), False))]:
                if only(fam, n):
                    case(fam, n, fn)

    # Row configurations: (config, cap on the cached vectors) as launch_ce picks them; -1 = auto.
    configs = [(-1, -1), (0, -1), (1, -1), (1, 0), (1, 1), (2, -1), (2, 0), (2, 1), (3, -1), (3, 0), (3, 1)]
    if DEV != "cuda":
        configs = [(-1, -1)]  # the switches are CUDA-only
    try:
        for dn, dt in DTYPES.items():
            for config, cap in configs:
                for C in [5, 131, 3001, 40000]:
                    for off in [0, 1]:
                        for kind, red in [("class", "none"), ("prob", "mean")]:
                            n = (f"config={config} smem_cap={cap} {kind} {dn} C{C}{' unaligned' if off else ''} "
                                 f"{red}")
                            if not only(fam, n):
                                continue

                            def run(config=config, cap=cap, C=C, off=off, kind=kind, red=red, dt=dt):
                                if set_option("ce_config", config) is None or set_option("ce_smem_vecs", cap) is None:
                                    raise RuntimeError("this build has no ce_config / ce_smem_vecs option")
                                x = randn(3, C, dtype=dt, offset=off)
                                w = (torch.rand(C, dtype=torch.float64) + 0.5).to(DEV, dt)
                                kw = {"reduction": red, "weight": w, "label_smoothing": 0.1}
                                if kind == "class":
                                    t = class_target((3,), C)
                                else:
                                    t = torch.randn(3, C, dtype=torch.float64).softmax(1).to(DEV, dt)
                                compare(CE, TCE, [x, t], kw, dt, red)
                            case(fam, n, run)
    finally:
        set_option("ce_config", -1)
        set_option("ce_smem_vecs", -1)


def ctc_cases(only):
    """Every dtype x reduction: padded (N, S) and concatenated targets, int32 and int64, zero_infinity,
    an impossible sample, target length 0; long targets: K = 2, 4, 8 states per thread (2S+1 > 1024,
    2048, 4096) and the > 48 KB shared-memory launch (S about 3060 in 4-byte accumulators, 1525 in
    float64)."""
    fam = "ctc"

    def make(T, N, C, S, dt, feasible=True):
        lp = torch.randn(T, N, C, dtype=torch.float64).log_softmax(-1).to(DEV, dt).requires_grad_()
        tg = torch.randint(1, C, (N, S))
        if S > 100:  # long targets: labels that never repeat (but once), so T = S + a little is feasible
            tg = 1 + (torch.arange(S).repeat(N, 1) + torch.randint(0, C - 1, (N, 1))) % (C - 1)
        if S > 2:
            tg[0, 1] = tg[0, 0]  # a repeat
        il = torch.full((N,), T, dtype=torch.int64)
        tl = torch.full((N,), S, dtype=torch.int64)
        if N > 1:
            il[1] = max(T - 3, 0)
            tl[-1] = 0 if N > 2 else S // 2
        if not feasible and N > 2:
            tl[1] = S
            il[1] = max(1, S // 2)  # too few time steps: an infinite loss
        return lp, tg, il, tl

    def run_ctc(T, N, C, S, dt, red, concat=False, int32=False, zero_inf=False, feasible=True, tol=None):
        def run():
            lp, tg, il, tl = make(T, N, C, S, dt, feasible)
            targets = torch.cat([tg[i, :tl[i]] for i in range(N)]) if concat else tg
            targets = targets.to(DEV, torch.int32 if int32 else torch.int64)
            ilx, tlx = (il.to(DEV), tl.to(DEV)) if concat else (il, tl)
            kw = {"reduction": red, "zero_infinity": zero_inf}

            def ref(lp_, tg_, il_, tl_, **k):
                return TF["ctc_loss"](lp_, tg_.long(), il_.cpu(), tl_.cpu(), **k)
            compare(Fl.ctc_loss, ref, [lp, targets, ilx, tlx], kw, dt, red, tol)
        return run

    for dn, dt in DTYPES.items():
        # fp16 gradients: the pre-divided gradient stored in float16 can go subnormal (README caveat);
        # float32 long targets: thousands of log-space steps in float32 (as torch's float32 CTC)
        tol = 3e-2 if dt == torch.float16 else None
        # (measured at S = 4000 against float64: torch's float32 CTC 1.1% of the largest gradient, fastloss 0.55%)
        tol_long = {torch.float32: 2e-2, torch.float16: 3e-2}.get(dt)
        for red in REDUCTIONS:
            tag = f"{dn} {red}"
            for n, fn in [(f"padded T40 N4 C33 S12 {tag}", run_ctc(40, 4, 33, 12, dt, red, tol=tol)),
                          (f"concatenated int32 T40 N4 C33 S12 {tag}", run_ctc(40, 4, 33, 12, dt, red, True, True,
                                                                               tol=tol)),
                          (f"impossible sample zero_infinity T30 N3 C5 S10 {tag}",
                           run_ctc(30, 3, 5, 10, dt, red, zero_inf=True, feasible=False, tol=tol)),
                          (f"impossible sample inf T30 N3 C5 S10 {tag}",
                           run_ctc(30, 3, 5, 10, dt, red, feasible=False, tol=tol)),
                          (f"one step T1 N1 C2 S1 {tag}", run_ctc(1, 1, 2, 1, dt, red, tol=tol))]:
                if only(fam, n):
                    case(fam, n, fn)
        # the CPU reference costs O(T * S): every K for float32, the > 48 KB edge for the others
        longs = {torch.float32: [600, 1500, 3060, 4000], torch.float64: [1525, 3000]}.get(dt, [3060])
        for S in longs:
            K = 1
            while K < 8 and 2 * S + 1 > K * 1024:
                K *= 2
            n = f"long target S{S} (K={K}) {dn} mean"
            if only(fam, n):
                case(fam, n, run_ctc(S + 20, 2, 6, S, dt, "mean", tol=tol_long))


def margin_rows_cases(only):
    """multi_margin: warp rows (C <= 2048) and block rows, aligned and misaligned, p = 1, 2, weights;
    multilabel_margin: warp rows, block rows in default and opt-in shared memory, global-scratch rows
    (C past the opt-in limit, a few classes listed per row); -1 anywhere, duplicates, a full list."""
    fam = "margin_rows"
    for dn, dt in DTYPES.items():
        for red in REDUCTIONS:
            for C, off in [(33, 0), (2048, 0), (2048, 1), (2051, 0), (4096, 1)]:
                for p, weighted in [(1, False), (2, True)]:
                    wn, un = " weight" if weighted else "", " unaligned" if off else ""
                    n = f"multi_margin p={p}{wn} {dn} {red} C{C}{un}"
                    if not only(fam, n):
                        continue

                    def mm(C=C, off=off, p=p, weighted=weighted, red=red, dt=dt):
                        x = randn(5, C, dtype=dt, offset=off)
                        t = torch.randint(0, C, (5,)).to(DEV)
                        kw = {"p": p, "margin": 0.5, "reduction": red}
                        if weighted:
                            kw["weight"] = (torch.rand(C, dtype=torch.float64) + 0.5).to(DEV, dt)
                        compare(Fl.multi_margin_loss, TF["multi_margin_loss"], [x, t], kw, dt, red)
                    case(fam, n, mm)
            # tiers (bytes per class: 8 + 4, or 8 + 8 in float64): a warp per row while 8 rows fit 48 KB
            # (C <= 500 / 376); a block with the row in shared memory (default up to ~4000 / 3000 classes,
            # opt-in up to ~19000 / 14000 on an H100); past that, counters in global scratch.
            for tier, C in [("warp", 33), ("warp", 300), ("block", 1000), ("block opt-in smem", 8000),
                            ("global scratch", 20000)]:
                n = f"multilabel_margin {tier} {dn} {red} C{C}"
                if not only(fam, n):
                    continue

                def ml(C=C, red=red, dt=dt):
                    rows = 4
                    x = randn(rows, C, dtype=dt)
                    t = torch.full((rows, C), -1, dtype=torch.int64)
                    k = min(C, 6)
                    t[0, :k] = torch.randint(0, C, (k,))           # a few classes, then -1
                    t[1, :k] = torch.randint(0, C, (1,)).repeat(k)  # one class listed k times
                    t[2, 0] = -1                                    # empty list, garbage after it
                    t[2, 1:k] = torch.randint(0, C, (k - 1,))
                    if C <= 1000:                                   # a full list, no -1 (O(C^2): small C only)
                        t[3] = torch.randint(0, C, (C,))
                    else:
                        t[3, :k] = torch.randint(0, C, (k,))
                    compare(Fl.multilabel_margin_loss, TF["multilabel_margin_loss"], [x, t.to(DEV)],
                            {"reduction": red}, dt, red)
                case(fam, n, ml)


def grad_scale_cases(only):
    """fastloss::scale_grad (out of place) and scale_grad_ (in place): one factor (factor 1 is skipped
    on the device, another is applied) and one factor per (outer, inner) row; aligned and misaligned
    (a contiguous view starting one element in); and the backward paths that use them (retain_graph)."""
    fam = "grad_scale"
    for dn, dt in DTYPES.items():
        for (outer, classes, inner), off in [((4, 37, 1), 0), ((4, 37, 1), 1), ((3, 5, 7), 0), ((2, 1000, 1), 1)]:
            for per_row, fval in [(False, 1.0), (False, 1.7), (True, None)]:
                for inplace in [False, True]:
                    n = (f"scale_grad{'_' if inplace else ''} {'per-row' if per_row else f'factor {fval}'} {dn} "
                         f"({outer},{classes},{inner}){' unaligned' if off else ''}")
                    if not only(fam, n):
                        continue

                    def run(outer=outer, classes=classes, inner=inner, off=off, per_row=per_row, fval=fval,
                            inplace=inplace, dt=dt):
                        numel = outer * classes * inner
                        acc = torch.float64 if dt == torch.float64 else torch.float32
                        g = torch.empty(numel + off, device=DEV, dtype=dt)[off:].view(outer, classes, inner)
                        g.copy_(torch.randn(outer, classes, inner, dtype=torch.float64).to(DEV, dt))
                        if per_row:
                            f = (torch.rand(outer, inner, dtype=torch.float64) + 0.5).to(DEV, acc)
                            expect = g.double().cpu() * f.double().cpu().view(outer, 1, inner)
                            f_arg = f.view(-1)
                        else:
                            f_arg = torch.full((), fval, device=DEV, dtype=acc)
                            expect = g.double().cpu() * fval
                        if inplace:
                            ops.scale_grad_(g, f_arg, classes, inner)
                            out = g
                        else:
                            before = g.clone()
                            out = ops.scale_grad(g, f_arg, classes, inner)
                            if not torch.equal(before, g):
                                raise AssertionError("scale_grad changed its input")
                        assert_near("scaled", out, expect, TOL[dt])
                    case(fam, n, run)
        for red in ["mean", "sum", "none"]:
            n = f"backward retain_graph twice (out of place, then in place) cross_entropy {dn} {red}"
            if not only(fam, n):
                continue

            def twice(red=red, dt=dt):
                x = randn(8, 300, dtype=dt)
                t = class_target((8,), 300)
                loss = Fl.cross_entropy(x, t, reduction=red)
                rx = ref_of(x)
                rloss = TF["cross_entropy"](rx, t.cpu(), reduction=red)
                go = grad_output(loss, red)
                g1, = torch.autograd.grad(loss, [x], go, retain_graph=True)
                g2, = torch.autograd.grad(loss, [x], go * 2)
                r1, = torch.autograd.grad(rloss, [rx], ref_of(go), retain_graph=True)
                assert_near("first grad", g1, r1, TOL[dt])
                assert_near("second grad (x2)", g2, r1 * 2, TOL[dt])
            case(fam, n, twice)


def validation_cases(only):
    """Out-of-range targets with validation on: an error naming the op (at the call, at the next sync or
    through fastloss.check_errors(), whichever this build reports with); with it off (CUDA only): no
    error, the bad row NaN, nothing read or written out of bounds."""
    fam = "validation"

    def bad_calls():
        x = randn(4, 50, dtype=torch.float32)
        ct = torch.tensor([0, 50, 2, -100], device=DEV)
        lp = torch.randn(5, 2, 4, dtype=torch.float64).log_softmax(-1).to(DEV, torch.float32).requires_grad_()
        ml = torch.randint(0, 50, (4, 50), device=DEV)
        ml[1, 7] = 50
        p = torch.full((33,), 0.5, device=DEV)
        p[20] = 1.5
        return [
            ("cross_entropy", lambda: Fl.cross_entropy(x, ct, reduction="none"), 1),
            ("cross_entropy C large", lambda: Fl.cross_entropy(randn(3, 40000, dtype=torch.bfloat16),
                                                               torch.tensor([1, 40000, 2], device=DEV),
                                                               reduction="none"), 1),
            ("nll_loss", lambda: Fl.nll_loss(x, ct, reduction="none"), 1),
            ("ctc_loss", lambda: Fl.ctc_loss(lp, torch.tensor([[1, 9], [0, 2]], device=DEV), [5, 5], [2, 2],
                                             reduction="none"), 0),
            ("multi_margin_loss", lambda: Fl.multi_margin_loss(x, ct.clamp(-1, 50), reduction="none"), 1),
            ("multilabel_margin_loss", lambda: Fl.multilabel_margin_loss(x, ml, reduction="none"), 1),
            ("binary_cross_entropy", lambda: Fl.binary_cross_entropy(p, torch.full_like(p, 0.5)), None),
        ]

    def tiny():
        Fl.cross_entropy(randn(2, 3, dtype=torch.float32), torch.tensor([0, 1], device=DEV)).backward()
        sync()
        check_errors()

    for name, _, _ in bad_calls():
        n = f"{name} on: error"
        if only(fam, n):
            def on(name=name):
                prev = set_option("validate_targets", 1)
                try:
                    fn = dict((k, f) for k, f, _ in bad_calls())[name]
                    try:
                        fn()
                        sync()
                        check_errors()
                        tiny()  # a deferred error is raised by the next fastloss call
                    except (RuntimeError, IndexError, ValueError) as e:
                        msg = f"{type(e).__name__}: {' '.join(str(e).split())}"
                        if "CUDA error" in msg or "illegal" in msg:
                            raise
                    else:
                        raise AssertionError("the bad target was accepted")
                    check_errors()  # the error was reported once: nothing left pending
                    tiny()
                    return msg[:300]  # what the user reads
                finally:
                    if prev is not None:
                        set_option("validate_targets", prev)
            case(fam, n, on)
    if DEV != "cuda":
        return  # CPU targets are always checked
    for name, _, bad_row in bad_calls():
        n = f"{name} off: no error, NaN row"
        if only(fam, n):
            def off(name=name, bad_row=bad_row):
                prev = set_option("validate_targets", 0)
                if prev is None:
                    raise RuntimeError("this build has no validate_targets option")
                try:
                    fn = dict((k, f) for k, f, _ in bad_calls())[name]
                    out = fn()
                    if out.requires_grad:
                        out.sum().backward()
                    sync()
                    check_errors()
                    if bad_row is not None and not torch.isnan(out.detach().view(-1)[bad_row]).item():
                        raise AssertionError(f"row {bad_row} is {out.view(-1)[bad_row].item()}, not NaN")
                finally:
                    set_option("validate_targets", prev)
            case(fam, n, off)


FAMILIES = {
    "regression": pointwise_cases,  # also margin_ranking and hinge_embedding, counted under embedding
    "probabilistic": probabilistic_cases,
    "embedding": embedding_cases,
    "cross_entropy": cross_entropy_cases,
    "ctc": ctc_cases,
    "margin_rows": margin_rows_cases,
    "grad_scale": grad_scale_cases,
    "validation": validation_cases,
}


def main(argv=None):
    global DEV
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    ap.add_argument("--only", action="append", default=[],
                    help="run the cases whose 'family name' contains this text (repeatable: any of them)")
    ap.add_argument("--family", action="append", default=[], choices=list(FAMILIES),
                    help="run these case groups only (repeatable)")
    ap.add_argument("--list", action="store_true", help="print the case names, run nothing")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default 1)")
    args = ap.parse_args(argv)
    DEV = args.device
    # The float64 references are small: one CPU thread each. More only slow them down (thread start-up
    # and, on a shared machine, waiting for each other: 40x here).
    torch.set_num_threads(args.threads)
    if DEV == "cuda" and not (torch.cuda.is_available() and fastloss.cuda_built()):
        sys.exit("gpu_smoke: --device cuda needs a GPU and a CUDA build of fastloss")
    torch.manual_seed(0)

    def only(family, name):
        full = f"{family} {name}"
        wanted = not args.only or any(o in full for o in args.only)
        if wanted and args.list:
            print(full)
            return False
        return wanted

    t0 = time.perf_counter()
    lost = None
    for fam, fn in FAMILIES.items():
        if args.family and fam not in args.family:
            continue
        f0 = time.perf_counter()
        try:
            fn(only)
        except ContextLost as e:
            lost = str(e)
            break
        if not args.list:
            print(f"# {fam} cases took {time.perf_counter() - f0:.1f} s", flush=True)
    if args.list:
        return 0
    fams = {}
    for fam, _, ok in RESULTS:
        a = fams.setdefault(fam, [0, 0])
        a[0 if ok else 1] += 1
    print(f"\n# device {torch.cuda.get_device_name() if DEV == 'cuda' else 'cpu'}, torch {torch.__version__}")
    for fam, (good, bad) in fams.items():
        print(f"SMOKE {fam}: {good} ok, {bad} failed")
    good = sum(a[0] for a in fams.values())
    bad = sum(a[1] for a in fams.values())
    print(f"SMOKE total: {good} ok, {bad} failed, {time.perf_counter() - t0:.1f} s")
    if lost:
        print(f"SMOKE CUDA context lost after: {lost} (the cases after it did not run)")
        return 2
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
