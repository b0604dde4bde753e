"""Property-based tests (hypothesis): every loss against torch in float64 on drawn arguments, and
fastloss's results independent of the thread count, bitwise.

What is drawn: shapes (empty, one element, odd sizes, K dimensions), layouts of every tensor
(contiguous, transposed, sliced, expanded from a size-1 dimension), dtypes, reductions, the upstream
gradient (loss.sum(): an expanded grad_output; or a dense random one) and each loss's own arguments.
Values come from a torch generator seeded by a drawn integer, so a failure shrinks to small shapes
and seed 0 and replays. fastloss runs in the drawn dtype; the reference is torch on the same values
upcast to float64 (conftest.assert_close_ref's tolerances for the dtype).

Cost is bounded: FASTLOSS_HYPOTHESIS_EXAMPLES examples per test (default 15; raise it for a longer
search, e.g. 500), no deadline, and with CI set a derandomized (fixed) example sequence.
"""
import math
import os
import warnings

import pytest
import torch

import fastloss
from conftest import assert_close_ref

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

Fl = fastloss.functional
TORCH = Fl._TORCH
EXAMPLES = int(os.environ.get("FASTLOSS_HYPOTHESIS_EXAMPLES", "15"))
PROPS = settings(max_examples=EXAMPLES, deadline=None, derandomize=bool(os.environ.get("CI")),
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], database=None
                 if os.environ.get("CI") else settings.default.database)
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
LAYOUTS = ["contiguous", "transposed", "sliced", "expanded"]

ELEMENTWISE = ["l1_loss", "mse_loss", "smooth_l1_loss", "huber_loss", "soft_margin_loss", "kl_div",
               "binary_cross_entropy", "binary_cross_entropy_with_logits", "poisson_nll_loss",
               "hinge_embedding_loss", "sigmoid_focal_loss", "margin_ranking_loss", "multilabel_soft_margin_loss"]
CLASSES = ["cross_entropy", "nll_loss", "multi_margin_loss", "multilabel_margin_loss"]
ROWS = ["triplet_margin_loss", "cosine_embedding_loss", "gaussian_nll_loss"]


# ------------------------------------------------------------------------------ drawing helpers
def dims(draw, k_min=0, k_max=4, big=False):
    """A shape: 0 to 4 dims, sizes from {0, 1, odd, even}; `big` for thread-split sizes."""
    k = draw(st.integers(k_min, k_max))
    sizes = st.sampled_from([1, 2, 3, 5, 7]) if not big else st.sampled_from([3, 17, 64, 129])
    shape = [draw(sizes) for _ in range(k)]
    if shape and not big and draw(st.integers(0, 9)) == 0:
        shape[draw(st.integers(0, len(shape) - 1))] = 0  # an empty tensor now and then
    return tuple(shape)


class Layout:
    """A view with the values of a given dense tensor: `make(values)` returns (base, view), where the
    view (what the loss gets) is transposed / sliced / expanded from `base` (what a gradient is taken
    of). 'expanded' needs a size-1 dimension in the values: the caller's `expand_dim` says which."""

    def __init__(self, kind, expand_to=None):
        self.kind, self.expand_to = kind, expand_to

    def make(self, v, requires_grad=False):
        kind = self.kind
        if kind == "transposed" and v.dim() < 2:
            kind = "contiguous"
        if kind == "expanded" and self.expand_to is None:
            kind = "contiguous"
        if kind == "contiguous":
            base = v.clone()
            view_fn = lambda b: b  # noqa: E731
        elif kind == "transposed":
            base = v.transpose(-1, -2).contiguous()
            view_fn = lambda b: b.transpose(-1, -2)  # noqa: E731
        elif kind == "sliced":
            base = torch.zeros(v.shape + (2,), dtype=v.dtype)
            base[..., 1] = v
            view_fn = lambda b: b[..., 1]  # noqa: E731
        else:  # expanded: v has size 1 where expand_to is larger
            base = v.clone()
            shape = self.expand_to
            view_fn = lambda b: b.expand(shape)  # noqa: E731
        base.requires_grad_(requires_grad)
        return base, view_fn


def values(gen, shape, kind="normal"):
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    if kind == "prob":
        return torch.rand(shape, generator=gen, dtype=torch.float64) * 0.98 + 0.01
    if kind == "sign":
        return torch.where(x >= 0, 1.0, -1.0).to(torch.float64)
    if kind == "positive":
        return torch.rand(shape, generator=gen, dtype=torch.float64) * 3 + 0.05
    return x


def draw_layout(draw, shape):
    """A layout for a tensor of `shape`; an expanded one takes its values with one dimension of size 1."""
    kind = draw(st.sampled_from(LAYOUTS))
    if kind == "expanded":
        big = [i for i, s in enumerate(shape) if s > 1]
        if not big:
            return Layout("contiguous"), shape
        i = draw(st.sampled_from(big))
        return Layout("expanded", shape), shape[:i] + (1,) + shape[i + 1:]
    return Layout(kind), shape


# ------------------------------------------------------------------------------ one call, both sides
class Call:
    """A loss call: its float64 argument values with their layouts, which of them are differentiated, the
    keyword arguments (tensors among them in float64) and the upstream gradient."""

    def __init__(self, name):
        self.name, self.args, self.kw, self.diff = name, [], {}, []

    def arg(self, v, layout=None, diff=False, floating=True):
        self.args.append((v, layout or Layout("contiguous"), floating))
        if diff:
            self.diff.append(len(self.args) - 1)

    def run(self, fn, dtype, dense=False, rounded_to=None):
        """(loss, gradients of the differentiated views) with the tensors in `dtype`, or ('error', type)."""
        bases, views = [], []
        for i, (v, layout, floating) in enumerate(self.args):
            if floating and rounded_to is not None:  # the reference: the tested dtype's values, upcast
                v = v.to(rounded_to)
            v = v.to(dtype) if floating else v
            base, view_fn = layout.make(v, requires_grad=i in self.diff)
            bases.append(base)
            views.append(view_fn(base).contiguous() if dense else view_fn(base))
        kw = {k: (t.to(rounded_to or dtype).to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t)
              for k, t in self.kw.items()}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = fn(*views, **kw)
        except Exception as e:
            return ("error", type(e).__name__), None
        if not self.diff or not out.requires_grad:
            return out.detach(), []
        if self.upstream == "sum":  # the expanded grad_output of loss.sum()
            total = out.sum()
        else:
            g = torch.Generator().manual_seed(1)
            total = (out * torch.rand(out.shape, generator=g, dtype=torch.float64).to(out.dtype)).sum()
        # the gradients of the views the loss received (an expanded view's, not the sum autograd forms for its
        # base: in half types that sum's rounding would be compared, not fastloss's)
        grads = torch.autograd.grad(total, [views[i] for i in self.diff], allow_unused=True)
        return out.detach(), list(grads)

    def __repr__(self):
        return f"<{self.describe()} seed={self.seed}>"

    def describe(self):
        shapes = [f"{tuple(v.shape)}/{lay.kind}" for v, lay, _ in self.args]
        kw = {k: (tuple(v.shape) if isinstance(v, torch.Tensor) else v) for k, v in self.kw.items()}
        return f"{self.name}({', '.join(shapes)}, {kw}) upstream={self.upstream}"


def check_against_torch(call, dtype):
    ours, our_grads = call.run(getattr(Fl, call.name), dtype)
    # torch gets the same values densely: the layouts are fastloss's to handle (and torch's nll_loss2d backward
    # refuses a non-contiguous input with reduction='none': "grad_input must be contiguous")
    ref, ref_grads = call.run(TORCH[call.name], torch.float64, dense=True, rounded_to=dtype)
    what = call.describe() + f" dtype={dtype}"
    if isinstance(ref, tuple) or isinstance(ours, tuple):
        assert isinstance(ours, tuple) and isinstance(ref, tuple), f"{what}: fastloss {ours}, torch {ref}"
        return
    assert ours.dtype == dtype, what
    x = call.args[0][0]
    if (call.name in ("multi_margin_loss", "multilabel_margin_loss") and call.kw["reduction"] != "none"
            and x.dim() == 2 and x.shape[0] == 0):
        # torch returns uninitialized memory for an empty batch, 'mean' (documented in the README) and 'sum' (seen
        # under AddressSanitizer, which fills fresh allocations: 0xbebebebebebebebe = -1.83e-06 in float64)
        assert ours.isnan() if call.kw["reduction"] == "mean" else ours == 0, what
        return
    assert_close_ref(ours, ref, dtype, f"loss: {what}")
    assert len(our_grads) == len(ref_grads)
    for j, (a, r) in enumerate(zip(our_grads, ref_grads)):
        assert (a is None) == (r is None), f"grad {j}: {what}"
        if a is not None:
            assert_close_ref(a, r, dtype, f"grad {j}: {what}")


# ------------------------------------------------------------------------------ argument strategies
def draw_elementwise(draw, name, gen, big=False):
    shape = dims(draw, 1 if name == "multilabel_soft_margin_loss" else 0, 4, big)
    c = Call(name)
    lay_a, sa = draw_layout(draw, shape)
    kind_a = {"binary_cross_entropy": "prob", "poisson_nll_loss": "positive"}.get(name, "normal")
    kind_b = {"soft_margin_loss": "sign", "hinge_embedding_loss": "sign", "kl_div": "prob",
              "binary_cross_entropy": "prob", "binary_cross_entropy_with_logits": "prob",
              "sigmoid_focal_loss": "prob", "multilabel_soft_margin_loss": "prob",
              "poisson_nll_loss": "positive"}.get(name, "normal")
    lay_b, sb = draw_layout(draw, shape)
    regression = name in ("l1_loss", "mse_loss", "smooth_l1_loss", "huber_loss")
    c.arg(values(gen, sa, kind_a), lay_a, diff=True)
    if name == "margin_ranking_loss":
        c.arg(values(gen, sb), lay_b, diff=draw(st.booleans()))
        lay_y, sy = draw_layout(draw, shape)
        c.arg(values(gen, sy, "sign"), lay_y)
        c.kw["margin"] = draw(st.sampled_from([0.0, 0.5]))
    else:
        c.arg(values(gen, sb, kind_b), lay_b, diff=regression and draw(st.booleans()))
    if name == "smooth_l1_loss":
        c.kw["beta"] = draw(st.sampled_from([0.0, 0.5, 1.0, 2.0]))
    if name == "huber_loss":
        c.kw["delta"] = draw(st.sampled_from([0.5, 1.0, 2.0]))
    if name == "hinge_embedding_loss":
        c.kw["margin"] = draw(st.sampled_from([0.0, 1.0, -0.5]))
    if name == "kl_div":
        c.kw["log_target"] = draw(st.booleans())
        if c.kw["log_target"]:
            c.args[1] = (c.args[1][0].log(), c.args[1][1], True)
    if name == "poisson_nll_loss":
        c.kw.update(log_input=draw(st.booleans()), full=draw(st.booleans()))
    if name == "sigmoid_focal_loss":
        c.kw.update(alpha=draw(st.sampled_from([-1.0, 0.25, 0.5])), gamma=draw(st.sampled_from([0.0, 0.5, 2.0])))
    if name in ("binary_cross_entropy", "binary_cross_entropy_with_logits", "multilabel_soft_margin_loss") \
            and shape and draw(st.booleans()):
        c.kw["weight"] = values(gen, shape[-1:], "positive")
    if name == "binary_cross_entropy_with_logits" and shape and draw(st.booleans()):
        c.kw["pos_weight"] = values(gen, shape[-1:], "positive")
    return c


def draw_classes(draw, name, gen, big=False):
    C = draw(st.sampled_from([1, 2, 3, 5, 8] if not big else [7, 300, 1000]))
    kdim = name in ("cross_entropy", "nll_loss")
    nd = draw(st.sampled_from([1, 2, 3, 4] if kdim else [1, 2]))
    N = draw(st.sampled_from([0, 1, 2, 5] if not big else [33, 100]))
    extra = tuple(draw(st.sampled_from([1, 2, 3])) for _ in range(max(nd - 2, 0)))
    shape = (C,) if nd == 1 else (N, C) + extra
    c = Call(name)
    lay, sv = draw_layout(draw, shape)
    c.arg(values(gen, sv), lay, diff=True)
    tshape = () if nd == 1 else (N,) + extra
    if name == "multilabel_margin_loss":
        t = torch.randint(-1, C, shape, generator=gen)
        c.arg(t, Layout(draw(st.sampled_from(["contiguous", "transposed", "sliced"]))), floating=False)
    elif name == "cross_entropy" and draw(st.integers(0, 3)) == 0:  # probability targets
        lay_t, st_ = draw_layout(draw, shape)
        c.arg(values(gen, st_).softmax(0 if nd == 1 else 1), lay_t)
    else:
        t = torch.randint(0, C, tshape, generator=gen)
        if name in ("cross_entropy", "nll_loss") and draw(st.booleans()):
            c.kw["ignore_index"] = draw(st.sampled_from([-100, 0, 1]))
            t = torch.where(torch.rand(tshape, generator=gen) < 0.3, c.kw["ignore_index"], t)
        c.arg(t, Layout(draw(st.sampled_from(["contiguous", "transposed", "sliced"]))), floating=False)
    if draw(st.booleans()):
        c.kw["weight"] = values(gen, (C,), "positive")
    if name == "cross_entropy" and draw(st.booleans()):
        c.kw["label_smoothing"] = draw(st.sampled_from([0.1, 0.5, 1.0]))
    if name == "multi_margin_loss":
        c.kw.update(p=draw(st.sampled_from([1, 2])), margin=draw(st.sampled_from([0.0, 1.0, 2.0])))
    return c


def draw_rows(draw, name, gen, big=False):
    N = draw(st.sampled_from([0, 1, 3, 5] if not big else [64, 300]))
    D = draw(st.sampled_from([1, 2, 7, 16] if not big else [65, 256]))
    unbatched = not big and draw(st.integers(0, 4)) == 0
    shape = (D,) if unbatched else (N, D)
    c = Call(name)
    if name == "gaussian_nll_loss":
        for _ in range(2):
            lay, sv = draw_layout(draw, shape)
            c.arg(values(gen, sv), lay, diff=True)
        var_shape = draw(st.sampled_from([shape, shape[:-1], shape[:-1] + (1,)]))
        c.arg(values(gen, var_shape, "positive"), Layout("contiguous"), diff=draw(st.booleans()))
        c.kw["full"] = draw(st.booleans())
        c.kw["eps"] = 1e-6
        return c
    n_in = 3 if name == "triplet_margin_loss" else 2
    for _ in range(n_in):
        lay, sv = draw_layout(draw, shape)
        c.arg(values(gen, sv), lay, diff=True)
    if name == "cosine_embedding_loss":
        c.arg(values(gen, () if unbatched else (N,), "sign"), Layout("contiguous"))
        c.kw["margin"] = draw(st.sampled_from([0.0, 0.3, -0.2]))
    else:
        c.kw.update(margin=draw(st.sampled_from([0.5, 1.0])), p=draw(st.sampled_from([1, 2, 3, 1.5, math.inf])),
                    swap=draw(st.booleans()))
    return c


def draw_ctc(draw, gen):
    T, N, C, S = (draw(st.sampled_from(v)) for v in ([1, 3, 6, 10], [1, 2, 3], [2, 3, 5], [0, 1, 2, 3]))
    blank = draw(st.sampled_from([0, C - 1]))
    labels = torch.tensor([c for c in range(C) if c != blank])
    c = Call("ctc_loss")
    lay, sv = draw_layout(draw, (T, N, C))
    c.arg(values(gen, sv).log_softmax(-1), lay, diff=True)
    c.arg(labels[torch.randint(0, len(labels), (N, S), generator=gen)], Layout("contiguous"), floating=False)
    c.arg(torch.randint(0, T + 1, (N,), generator=gen), Layout("contiguous"), floating=False)
    c.arg(torch.randint(0, S + 1, (N,), generator=gen), Layout("contiguous"), floating=False)
    c.kw.update(blank=blank, zero_infinity=draw(st.booleans()))
    return c


def finish(draw, c):
    reductions = ["none", "sum", "batchmean"] if c.name == "kl_div" else ["none", "mean", "sum"]
    c.kw["reduction"] = draw(st.sampled_from(reductions))
    c.upstream = draw(st.sampled_from(["sum", "random"]))
    return c


@st.composite
def calls(draw, names, big=False):
    name = draw(st.sampled_from(names))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    if name in ELEMENTWISE:
        c = draw_elementwise(draw, name, gen, big)
    elif name in CLASSES:
        c = draw_classes(draw, name, gen, big)
    elif name == "ctc_loss":
        c = draw_ctc(draw, gen)
    else:
        c = draw_rows(draw, name, gen, big)
    c.seed = seed
    return finish(draw, c)


# ------------------------------------------------------------------------------ properties
@PROPS
@given(call=calls(ELEMENTWISE), dtype=st.sampled_from(DTYPES))
def test_elementwise_match_torch(call, dtype):
    check_against_torch(call, dtype)


@PROPS
@given(call=calls(CLASSES), dtype=st.sampled_from(DTYPES))
def test_class_losses_match_torch(call, dtype):
    check_against_torch(call, dtype)


@PROPS
@given(call=calls(ROWS), dtype=st.sampled_from(DTYPES))
def test_row_losses_match_torch(call, dtype):
    check_against_torch(call, dtype)


@PROPS
@given(call=calls(["ctc_loss"]), dtype=st.sampled_from([torch.float64, torch.float32]))
def test_ctc_matches_torch(call, dtype):
    check_against_torch(call, dtype)


def _with_threads(n, fn):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(old)


@PROPS
@given(call=calls(ELEMENTWISE + CLASSES + ROWS, big=True),
       dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float64]))
def test_thread_count_does_not_change_bits(call, dtype):
    """Sizes past the kernels' parallel grains: one thread and two give the same bits (loss and gradients)."""
    fn = getattr(Fl, call.name)
    one = _with_threads(1, lambda: call.run(fn, dtype))
    two = _with_threads(2, lambda: call.run(fn, dtype))
    what = call.describe() + f" dtype={dtype}"
    if isinstance(one[0], tuple):
        assert one[0] == two[0], what
        return
    assert torch.equal(one[0], two[0]) or (one[0].isnan().all() and two[0].isnan().all()), f"loss: {what}"
    for a, b in zip(one[1], two[1]):
        assert (a is None) == (b is None), what
        if a is not None:
            assert torch.equal(a.nan_to_num(), b.nan_to_num()) and torch.equal(a.isnan(), b.isnan()), \
                f"grad: {what}"
