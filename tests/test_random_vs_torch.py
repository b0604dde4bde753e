"""Differential random test: every loss against torch on randomly drawn arguments (float64, CPU and CUDA).

The family tests pin down each semantic on purpose-built cases; this one draws combinations nobody wrote
down -- shapes (empty, 0-d, K-dim), reductions, weights, ignore_index, smoothing, probability targets,
broadcast targets, non-contiguous views -- and compares the loss and the gradient of a weighted sum of the
loss (every element's gradient path) with torch's. A fixed seed per loss: a failure names its case and
replays. Excluded, as documented in docs/losses/margins.md: the empty-batch 'mean' of multi_margin / multilabel_margin
(torch returns uninitialized memory; fastloss NaN)."""
import random
import warnings

import pytest
import torch

import fastloss
from conftest import device_params

Fl = fastloss.functional
CASES_PER_LOSS = 60
DT = torch.float64

_ELEMENTWISE = ("l1_loss", "mse_loss", "smooth_l1_loss", "huber_loss", "soft_margin_loss", "kl_div",
                "binary_cross_entropy", "binary_cross_entropy_with_logits", "poisson_nll_loss",
                "sigmoid_focal_loss", "multilabel_soft_margin_loss", "hinge_embedding_loss")


def _shape(rng):
    return tuple(rng.choice([0, 1, 2, 3, 5]) if rng.random() < 0.1 else rng.choice([1, 2, 3, 4, 6])
                 for _ in range(rng.choice([0, 1, 1, 2, 2, 2, 3, 4])))


def _elementwise(name, rng, dev):
    s = _shape(rng)
    if name == "multilabel_soft_margin_loss" and not s:
        s = (3,)
    ts = s
    if name in ("l1_loss", "mse_loss", "smooth_l1_loss", "huber_loss") and s and rng.random() < 0.2:
        ts = (1,) + s[1:]  # a broadcast target (torch warns)
    x, t = torch.randn(s, dtype=DT, device=dev), torch.randn(ts, dtype=DT, device=dev)
    kw = {}
    if name == "binary_cross_entropy":
        x, t = x.sigmoid(), t.sigmoid()
    elif name in ("binary_cross_entropy_with_logits", "sigmoid_focal_loss", "multilabel_soft_margin_loss", "kl_div"):
        t = t.sigmoid()
    elif name in ("soft_margin_loss", "hinge_embedding_loss"):
        t = torch.sign(t)
    elif name == "poisson_nll_loss":
        kw = {"log_input": rng.random() < 0.5, "full": rng.random() < 0.5}
        x, t = (x if kw["log_input"] else x.abs()), 3 * t.sigmoid()
    if name == "smooth_l1_loss":
        kw["beta"] = rng.choice([0.0, 0.5, 1.0, 2.0])
    if name == "huber_loss":
        kw["delta"] = rng.choice([0.5, 1.0, 2.0])
    if name == "hinge_embedding_loss":
        kw["margin"] = rng.choice([0.0, 1.0, -0.5])
    if name == "kl_div":
        kw["log_target"] = rng.random() < 0.3
        t = t.log() if kw["log_target"] else t
    if name in ("binary_cross_entropy", "binary_cross_entropy_with_logits", "multilabel_soft_margin_loss") \
            and s and rng.random() < 0.5:
        kw["weight"] = torch.rand(s[-1:], dtype=DT, device=dev)
    if name == "binary_cross_entropy_with_logits" and s and rng.random() < 0.5:
        kw["pos_weight"] = 2 * torch.rand(s[-1:], dtype=DT, device=dev)
    if name in ("l1_loss", "mse_loss", "huber_loss") and rng.random() < 0.3:
        kw["weight"] = torch.rand(torch.broadcast_shapes(s, ts), dtype=DT, device=dev)
    if name == "sigmoid_focal_loss":
        kw.update(alpha=rng.choice([-1, 0.25, 0.5]), gamma=rng.choice([0, 0.5, 1, 2]))
    return [x, t], kw


def _classes(name, rng, dev):
    C = rng.choice([1, 2, 3, 5, 8])
    nd = rng.choice([1, 2, 2, 3]) if name in ("cross_entropy", "nll_loss") else rng.choice([1, 2])
    shape = (C,) if nd == 1 else (rng.choice([0, 1, 2, 4]), C) + tuple(rng.choice([1, 2, 3]) for _ in range(nd - 2))
    x = torch.randn(shape, dtype=DT, device=dev)
    if name == "multilabel_margin_loss":
        return [x, torch.randint(-1, C, shape, device=dev)], {}
    tshape = () if nd == 1 else shape[:1] + shape[2:]
    t = torch.randint(0, C, tshape, device=dev)
    kw = {}
    if name in ("cross_entropy", "nll_loss") and rng.random() < 0.3:
        kw["ignore_index"] = rng.choice([-100, 0, 1])
        t = torch.where(torch.rand(tshape, device=dev) < 0.3, kw["ignore_index"], t)
    if rng.random() < 0.5:
        kw["weight"] = torch.rand(C, dtype=DT, device=dev) + 0.1
    if name == "cross_entropy":
        if rng.random() < 0.4:
            kw["label_smoothing"] = rng.choice([0.1, 0.5, 1.0])
        if rng.random() < 0.3:  # probability targets
            t = torch.randn(shape, dtype=DT, device=dev).softmax(0 if nd == 1 else 1)
            kw.pop("ignore_index", None)
    if name == "multi_margin_loss":
        kw.update(p=rng.choice([1, 2]), margin=rng.choice([0.0, 1.0, 2.0]))
    return [x, t], kw


def _rows(name, rng, dev):
    if name == "margin_ranking_loss":
        s = _shape(rng)
        return ([torch.randn(s, dtype=DT, device=dev), torch.randn(s, dtype=DT, device=dev),
                 torch.sign(torch.randn(s, dtype=DT, device=dev))], {"margin": rng.choice([0.0, 0.5])})
    N, D = rng.choice([1, 3, 5]), rng.choice([1, 2, 4, 7])
    if name == "cosine_embedding_loss":
        if rng.random() < 0.3:  # unbatched: (D,) inputs, 0-d target
            args = [torch.randn(D, dtype=DT, device=dev), torch.randn(D, dtype=DT, device=dev),
                    torch.tensor(rng.choice([1.0, -1.0]), dtype=DT, device=dev)]
        else:
            args = [torch.randn(N, D, dtype=DT, device=dev), torch.randn(N, D, dtype=DT, device=dev),
                    torch.sign(torch.randn(N, dtype=DT, device=dev))]
        return args, {"margin": rng.choice([0.0, 0.3, -0.2])}
    s = (D,) if rng.random() < 0.2 else (N, D)
    args = [torch.randn(s, dtype=DT, device=dev) for _ in range(3)]
    if name == "triplet_margin_with_distance_loss":
        return args, {"margin": rng.choice([0.5, 1.0]), "swap": rng.random() < 0.5}
    return args, {"margin": rng.choice([0.5, 1.0]), "p": rng.choice([1, 2, 3, 1.5, float("inf")]),
                  "swap": rng.random() < 0.5}


def _gaussian(rng, dev):
    s = _shape(rng) or (3,)
    var_shape = rng.choice([s, s[:-1], s[:-1] + (1,)])  # same, one dimension short, one dimension of 1
    return ([torch.randn(s, dtype=DT, device=dev), torch.randn(s, dtype=DT, device=dev),
             torch.rand(var_shape, dtype=DT, device=dev) + 0.05], {"full": rng.random() < 0.5})


def _ctc(rng, dev):
    T, N, C, S = rng.choice([1, 3, 6, 10]), rng.choice([1, 2, 3]), rng.choice([2, 3, 5]), rng.choice([0, 1, 2, 3])
    blank = rng.choice([0, C - 1])
    labels = [c for c in range(C) if c != blank]
    targets = torch.tensor([[rng.choice(labels) for _ in range(S)] for _ in range(N)], dtype=torch.long,
                           device=dev).view(N, S)
    lengths = ([rng.randint(0, T) for _ in range(N)], [rng.randint(0, S) for _ in range(N)])
    return ([torch.randn(T, N, C, dtype=DT, device=dev).log_softmax(2), targets, *lengths],
            {"blank": blank, "zero_infinity": rng.random() < 0.5})


def _draw(name, rng, dev):
    """(args, kwargs) of one random call; args[0] is the differentiated input."""
    if name in _ELEMENTWISE:
        args, kw = _elementwise(name, rng, dev)
    elif name in ("cross_entropy", "nll_loss", "multi_margin_loss", "multilabel_margin_loss"):
        args, kw = _classes(name, rng, dev)
    elif name == "gaussian_nll_loss":
        args, kw = _gaussian(rng, dev)
    elif name == "ctc_loss":
        args, kw = _ctc(rng, dev)
    else:
        args, kw = _rows(name, rng, dev)
    reductions = ["none", "sum", "batchmean"] if name == "kl_div" else ["none", "mean", "sum"]
    kw["reduction"] = rng.choice(reductions)
    for i, a in enumerate(args):  # half the tensors become non-contiguous views of the same values
        if isinstance(a, torch.Tensor) and a.dim() > 0 and rng.random() < 0.5:
            wide = torch.zeros(a.shape + (2,), dtype=a.dtype, device=dev)
            wide[..., 1] = a
            args[i] = wide[..., 1]
    return args, kw


def _run(fn, args, kw):
    """(loss, gradient of sum(loss * (1, 2, 3 ...)) w.r.t. args[0]) or ('error', type)."""
    x = args[0].detach().requires_grad_()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's broadcast / batchmean warnings, checked elsewhere
            out = fn(x, *args[1:], **kw)
    except Exception as e:  # the two sides must fail alike (any error type)
        return ("error", type(e).__name__), None
    weights = torch.arange(1, out.numel() + 1, dtype=out.dtype, device=out.device).view(out.shape)
    (grad,) = torch.autograd.grad((out * weights).sum(), x, allow_unused=True)
    return out.detach(), grad


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("name", Fl.__all__)
def test_random_calls_match_torch(name, device):
    torch_fn = Fl._TORCH[name]  # torch's original (the focal loss: its formula in torch ops)
    rng = random.Random(name)
    for case in range(CASES_PER_LOSS):
        torch.manual_seed(case)
        args, kw = _draw(name, rng, device)
        what = (f"{name} case {case}: " + ", ".join(str(tuple(a.shape)) if isinstance(a, torch.Tensor) else str(a)
                                                    for a in args)
                + f" {({k: v for k, v in kw.items() if not isinstance(v, torch.Tensor)})}"
                + f" tensors={[k for k, v in kw.items() if isinstance(v, torch.Tensor)]}")
        ours, our_grad = _run(getattr(Fl, name), args, kw)
        theirs, their_grad = _run(torch_fn, args, kw)
        if isinstance(theirs, tuple) or isinstance(ours, tuple):
            assert isinstance(ours, tuple) and isinstance(theirs, tuple), f"{what}: fastloss {ours}, torch {theirs}"
            continue
        if (name in ("multi_margin_loss", "multilabel_margin_loss") and kw["reduction"] != "none"
                and args[0].dim() == 2 and args[0].shape[0] == 0):
            # documented: torch returns uninitialized memory here ('mean'; 'sum' too, as AddressSanitizer's
            # filled allocations show: 0xbebebebebebebebe = -1.83e-06)
            assert ours.isnan() if kw["reduction"] == "mean" else ours == 0, what
            continue
        assert ours.shape == theirs.shape, what
        torch.testing.assert_close(ours, theirs, rtol=1e-7, atol=1e-9, equal_nan=True, msg=lambda m: f"{what}: {m}")
        assert (our_grad is None) == (their_grad is None), what
        if our_grad is not None:
            torch.testing.assert_close(our_grad, their_grad, rtol=1e-7, atol=1e-9, equal_nan=True,
                                       msg=lambda m: f"{what}: grad {m}")
