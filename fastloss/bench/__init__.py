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
    python -m fastloss.bench --family regression               # cross_entropy|regression|embedding|ctc|probabilistic|margin_rows|all
    python -m fastloss.bench --json > bench.json               # records (also --csv); the table is not printed
    python -m fastloss.bench --plot speedup.png --family regression   # speed-up vs size, several sizes per loss
    python -m fastloss.bench --loss cross_entropy,nll_loss --shape 8192x128256 --dtype bf16
    python -m fastloss.bench --loss mse,smooth_l1 --shape 64M --dtype fp32 --reduction none
    python -m fastloss.bench --loss triplet_margin_loss --shape 65536x512 --swap
    python -m fastloss.bench --loss ctc_loss --shape 200x16x32x50 --dtype fp32
    python -m fastloss.bench --loss multi_margin,multilabel_margin --shape 4096x1000 --dtype fp32

--shape is ROWSxCLASSES for cross_entropy/nll_loss and multi_margin/multilabel_margin (8 listed classes
per row), NxD for triplet_margin[_with_distance] and cosine_embedding, TxNxCxS (time steps, batch,
classes, padded target length) for ctc_loss, and the input's shape (or element count: 64M, 4194304)
for the elementwise losses (l1, mse, smooth_l1, huber, margin_ranking, hinge_embedding).
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


def time_once(fn, device):
    """Seconds of one fn() call (CUDA: events around it; CPU: wall clock)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def timeit(fn, device, repeats=20, warmup=3):
    """Median seconds of fn() (CUDA: events around each call; CPU: wall clock)."""
    for _ in range(warmup):
        fn()
    sync(device)
    return statistics.median(time_once(fn, device) for _ in range(repeats))


def compare(fns, device, repeats=20, warmup=3, min_seconds=0.0, max_repeats=200):
    """Median seconds of each of `fns` (a dict name -> callable), timed in interleaved rounds
    (a, b, a, b, ...) so that drifts of the machine (clock, other load, page faults on a VM) fall on
    all of them alike rather than on whichever ran second. After `repeats` rounds, rounds go on until
    `min_seconds` have been spent in total (at most `max_repeats`): cheap cases get more samples."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times = {name: [] for name in fns}
    spent, rounds = 0.0, 0
    while rounds < repeats or (spent < min_seconds and rounds < max_repeats):
        for name, fn in fns.items():
            t = time_once(fn, device)
            times[name].append(t)
            spent += t
        rounds += 1
    return {name: statistics.median(ts) for name, ts in times.items()}


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


def fwd_bwd(fn, inputs, grad_output=None):
    """A closure running fn(*inputs) and its backward (with `grad_output`: None for a scalar loss)
    after clearing the .grad of every input that requires grad."""
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]

    def run():
        for t in leaves:
            t.grad = None
        fn(*inputs).backward(grad_output)

    return run


def fwd_only(fn, inputs):
    """A closure running fn(*inputs) under no_grad: the loss alone, no gradient work."""
    def run():
        with torch.no_grad():
            fn(*inputs)

    return run


# ---------------------------------------------------------------------------------------- cases
def fmt_count(n):
    """4194304 -> '4M', 1536 -> '1.5K', 1000 -> '1000'."""
    for unit, size in (("G", 2**30), ("M", 2**20), ("K", 2**10)):
        if n >= size and (n * 2) % size == 0:
            return f"{n / size:g}{unit}"
    return str(n)


def fmt_shape(shape):
    return fmt_count(shape[0]) if len(shape) == 1 else "x".join(str(s) for s in shape)


def parse_shape(s):
    """'8192x128256' -> (8192, 128256); '64M' -> (67108864,); '4K' -> (4096,)."""
    dims = []
    for part in s.lower().split("x"):
        mult = {"k": 2**10, "m": 2**20, "g": 2**30}.get(part[-1:], 1)
        dims.append(int(float(part[:-1] if mult > 1 else part) * mult))
    return tuple(dims)


class LossCase:
    """One loss at one size and dtype: builds its inputs (a tuple of tensors, the ones the loss
    differentiates requiring grad), calls an implementation on them (`call`), and counts the
    minimal bytes a forward (+ backward) must move (`min_bytes`). One subclass per family."""

    family = None
    losses = ()
    compile_fullgraph = True  # torch_compiled: fullgraph=True (False where torch's op cannot be captured whole)

    # How backward reaches a reduction='none' loss: "grad" = loss.backward(g) with a fixed random g of the
    # loss's shape (the upstream gradient of a weighted or masked reduction done by the caller);
    # "sum" = loss.sum().backward() (torch hands the loss an expanded scalar: stride 0).
    NONE_BACKWARDS = ("grad", "sum")

    def __init__(self, loss, dtype, device, reduction="mean"):
        if loss not in self.losses:
            raise ValueError(f"{type(self).__name__}: unknown loss {loss!r} (one of {', '.join(self.losses)})")
        self.loss, self.dtype, self.device, self.reduction = loss, dtype, torch.device(device), reduction
        self.none_backward = "grad"  # see NONE_BACKWARDS; "grad" is what benchmarks/ has always timed

    # subclasses define these
    def shape_label(self):
        raise NotImplementedError

    def extras(self):
        """Non-default arguments, for the case's name (e.g. ' swap')."""
        return ""

    def inputs(self):
        raise NotImplementedError

    def call(self, fn, *inputs):
        """fn (fastloss's or torch's function, or a compiled wrapper of torch's) on the inputs."""
        raise NotImplementedError

    def min_bytes(self, backward=True):
        raise NotImplementedError

    def elements(self):
        """Elements of the main differentiable input (the size axis of --plot)."""
        raise NotImplementedError

    # shared
    def none_out_passes(self, backward=True):
        """Passes over the per-sample loss of reduction='none' that min_bytes counts: written once, and
        with backward its upstream gradient read once, unless that gradient is .sum()'s expanded scalar."""
        return 2 if backward and self.none_backward == "grad" else 1

    @property
    def elem(self):
        return torch.finfo(self.dtype).bits // 8

    def generator(self):
        return torch.Generator(device=self.device).manual_seed(0)

    def reduction_label(self):
        """'' for mean, ' sum', ' none' (backward from a random grad_output) or ' none.sum'
        (backward from .sum())."""
        if self.reduction == "none" and self.none_backward == "sum":
            return " none.sum"
        return f" {self.reduction}" if self.reduction != "mean" else ""

    def name(self):
        return f"{self.loss} {DTYPE_NAMES[self.dtype]} {self.shape_label()}{self.extras()}{self.reduction_label()}"

    def series(self):
        """The name without the size: the line this case belongs to in --plot."""
        return f"{self.loss} {DTYPE_NAMES[self.dtype]}{self.extras()}{self.reduction_label()}"

    def function(self, impl):
        """The loss function of `impl` ('fastloss' or 'torch'); None when fastloss lacks it."""
        return getattr(fastloss.functional if impl == "fastloss" else F, self.loss, None)

    def bound(self, fn):
        """fn with this case's arguments bound: a callable on the inputs tuple."""
        return lambda *inputs: self.call(fn, *inputs)

    def grad_output(self, inputs):
        """The upstream gradient of backward: None for a scalar loss (backward uses 1), a fixed
        random tensor of the loss's shape for reduction='none'."""
        if self.reduction != "none":
            return None
        with torch.no_grad():
            out = self.call(self.function("torch"), *inputs)
        return torch.rand(out.shape, dtype=out.dtype, device=out.device, generator=self.generator())

    def backward_label(self):
        """How backward is reached: 'scalar' (mean, sum), 'grad_output' or 'sum()' (reduction='none')."""
        if self.reduction != "none":
            return "scalar"
        return "sum()" if self.none_backward == "sum" else "grad_output"

    def step(self, impl, *inputs):
        """Forward + backward of `impl` on the inputs, as a closure."""
        fn = self.bound(self.function(impl))
        if self.reduction == "none" and self.none_backward == "sum":
            return fwd_bwd(lambda *i: fn(*i).sum(), inputs)
        return fwd_bwd(fn, inputs, self.grad_output(inputs))


class CrossEntropyCase(LossCase):
    """cross_entropy / nll_loss on (rows, classes) logits, class-index targets."""

    family = "cross_entropy"
    losses = ("cross_entropy", "nll_loss")

    def __init__(self, loss, rows, classes, dtype, device, weight=False, ignore_frac=0.0, label_smoothing=0.0,
                 reduction="mean"):
        super().__init__(loss, dtype, device, reduction)
        self.rows, self.classes = rows, classes
        self.weight, self.ignore_frac, self.label_smoothing = weight, ignore_frac, label_smoothing

    def shape_label(self):
        return f"{self.rows}x{self.classes}"

    def elements(self):
        return self.rows * self.classes

    def extras(self):
        return "".join([" w" if self.weight else "", f" ign{self.ignore_frac:g}" if self.ignore_frac else "",
                        f" ls{self.label_smoothing:g}" if self.label_smoothing else ""])

    def inputs(self):
        g = self.generator()
        x = torch.randn(self.rows, self.classes, device=self.device, dtype=self.dtype, generator=g)
        if self.loss == "nll_loss":
            x = x.float().log_softmax(1).to(self.dtype)
        t = torch.randint(0, self.classes, (self.rows,), device=self.device, generator=g)
        if self.ignore_frac:
            t[torch.rand(self.rows, device=self.device, generator=g) < self.ignore_frac] = -100
        w = torch.rand(self.classes, device=self.device, dtype=self.dtype, generator=g) if self.weight else None
        return x.requires_grad_(), t, w

    def call(self, fn, x, t, w):
        kwargs = {"weight": w, "reduction": self.reduction}
        if self.loss == "cross_entropy":
            kwargs["label_smoothing"] = self.label_smoothing
        return fn(x, t, **kwargs)

    def min_bytes(self, backward=True):
        """Logits read once + int64 targets (+ weights) [+ gradient written once] [+ the per-row
        loss written (+ its upstream gradient read) for reduction='none']."""
        e = self.elem
        n = self.rows * self.classes * e + self.rows * 8 + (self.classes * e if self.weight else 0)
        if backward:
            n += self.rows * self.classes * e
        if self.reduction == "none":
            n += self.rows * e * self.none_out_passes(backward)
        return n


Case = CrossEntropyCase  # the name benchmarks/bench_cross_entropy.py (and older scripts) use


class ShapedCase(LossCase):
    """A case whose inputs are described by one shape (an int is a 1-D shape)."""

    def __init__(self, loss, shape, dtype, device, reduction="mean"):
        super().__init__(loss, dtype, device, reduction)
        self.shape = (shape,) if isinstance(shape, int) else tuple(shape)

    @property
    def numel(self):
        n = 1
        for s in self.shape:
            n *= s
        return n

    def shape_label(self):
        return fmt_shape(self.shape)

    def elements(self):
        return self.numel


class RegressionCase(ShapedCase):
    """l1 / mse / smooth_l1 / huber, and the elementwise soft_margin_loss (target +-1) and kl_div (target
    probabilities, 'mean' timed as 'batchmean'): input (requires grad) and target (does not), same shape."""

    family = "regression"
    losses = ("l1_loss", "mse_loss", "smooth_l1_loss", "huber_loss", "soft_margin_loss", "kl_div")

    def __init__(self, loss, shape, dtype, device, reduction="mean", beta=1.0, delta=1.0):
        super().__init__(loss, shape, dtype, device, reduction)
        self.beta, self.delta = beta, delta

    def extras(self):
        if self.loss == "smooth_l1_loss" and self.beta != 1.0:
            return f" beta{self.beta:g}"
        if self.loss == "huber_loss" and self.delta != 1.0:
            return f" delta{self.delta:g}"
        return ""

    def inputs(self):
        g = self.generator()
        x = torch.randn(self.shape, device=self.device, dtype=self.dtype, generator=g)
        y = torch.randn(self.shape, device=self.device, dtype=self.dtype, generator=g)  # |x - y| ~ 1.1: both branches
        if self.loss == "soft_margin_loss":
            y = torch.sign(y)
        elif self.loss == "kl_div":
            y = torch.rand(self.shape, device=self.device, dtype=self.dtype, generator=g)
        return x.requires_grad_(), y

    def call(self, fn, x, y):
        if self.loss == "smooth_l1_loss":
            return fn(x, y, reduction=self.reduction, beta=self.beta)
        if self.loss == "huber_loss":
            return fn(x, y, reduction=self.reduction, delta=self.delta)
        if self.loss == "kl_div" and self.reduction == "mean":
            return fn(x, y, reduction="batchmean")
        return fn(x, y, reduction=self.reduction)

    def min_bytes(self, backward=True):
        """mean/sum: input read + target read [+ input gradient written] = (2 [+1]) * N * elem.
        none: + loss written [+ upstream gradient read] = (3 [+2]) * N * elem (none.sum: [+1], .sum()'s
        upstream gradient is one scalar; see none_out_passes).
        (With backward a separate pass, something must be re-read there; this lower bound counts
        each tensor once, the convention of every table.)"""
        n, e = self.numel, self.elem
        out = self.none_out_passes(backward) if self.reduction == "none" else 0
        return n * e * (2 + (1 if backward else 0) + out)


def torch_sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2, reduction="none"):
    """The torch side of sigmoid_focal_loss (torch.nn has none): torchvision.ops.sigmoid_focal_loss's
    formula written with torch ops, as torchvision writes it."""
    p = torch.sigmoid(inputs)
    ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


class BinaryCase(ShapedCase):
    """The probabilistic / multi-label family on (rows, classes) inputs: binary_cross_entropy
    (probabilities), binary_cross_entropy_with_logits (with a per-class pos_weight), poisson_nll_loss,
    gaussian_nll_loss (a full-shape var that requires grad), multilabel_soft_margin_loss and
    sigmoid_focal_loss (torch side: torchvision's formula in torch ops). Input requires grad; targets in
    [0, 1] (counts for poisson)."""

    family = "probabilistic"
    losses = ("binary_cross_entropy", "binary_cross_entropy_with_logits", "poisson_nll_loss", "gaussian_nll_loss",
              "multilabel_soft_margin_loss", "sigmoid_focal_loss")
    CLASSES = 1024  # last dimension when the shape is given as an element count

    @property
    def compile_fullgraph(self):  # F.gaussian_nll_loss branches on torch.any(var < 0): no full graph
        return self.loss != "gaussian_nll_loss"

    def __init__(self, loss, shape, dtype, device, reduction="mean"):
        if len(shape) == 1 and shape[0] % self.CLASSES == 0:
            shape = (shape[0] // self.CLASSES, self.CLASSES)
        super().__init__(loss, shape, dtype, device, reduction)

    def function(self, impl):
        if impl == "torch" and self.loss == "sigmoid_focal_loss":
            return torch_sigmoid_focal_loss
        return super().function(impl)

    def inputs(self):
        g = self.generator()
        kw = dict(device=self.device, dtype=self.dtype)
        x = torch.randn(self.shape, generator=g, **kw)
        t = torch.rand(self.shape, generator=g, **kw)
        if self.loss == "binary_cross_entropy":
            x = torch.sigmoid(x)
        elif self.loss == "poisson_nll_loss":
            t = torch.poisson(torch.rand(self.shape, generator=g, device=self.device) * 4).to(self.dtype)
        elif self.loss == "gaussian_nll_loss":
            v = (torch.rand(self.shape, generator=g, **kw) + 0.1).requires_grad_()
            return x.requires_grad_(), t, v
        elif self.loss == "binary_cross_entropy_with_logits":
            pw = torch.rand(self.shape[-1:], generator=g, **kw) * 3
            return x.requires_grad_(), t, pw
        return x.requires_grad_(), t

    def call(self, fn, x, t, extra=None):
        if self.loss == "gaussian_nll_loss":
            return fn(x, t, extra, reduction=self.reduction)
        if self.loss == "binary_cross_entropy_with_logits":
            return fn(x, t, pos_weight=extra, reduction=self.reduction)
        return fn(x, t, reduction=self.reduction)

    def extras(self):
        return " pos_weight" if self.loss == "binary_cross_entropy_with_logits" else ""

    def min_bytes(self, backward=True):
        """input + target read [+ input gradient written]; gaussian also reads var [and writes its
        gradient]; 'none' adds the loss written [and the upstream gradient read] (per row for
        multilabel_soft_margin: negligible). pos_weight (one row) is not counted."""
        n, e = self.numel, self.elem
        tensors = 2 + (1 if backward else 0)
        if self.loss == "gaussian_nll_loss":
            tensors += 1 + (1 if backward else 0)
        if self.reduction == "none" and self.loss != "multilabel_soft_margin_loss":
            tensors += self.none_out_passes(backward)
        return n * e * tensors


class EmbeddingCase(ShapedCase):
    """The embedding family.
    triplet_margin_loss, triplet_margin_with_distance_loss (default distance): anchor, positive,
        negative (N, D), all requiring grad.
    cosine_embedding_loss: input1, input2 (N, D) requiring grad, target (N,) of +-1.
    margin_ranking_loss: input1, input2 (shape) requiring grad, target (shape) of +-1.
    hinge_embedding_loss: input (shape, >= 0 like distances) requiring grad, target (shape) of +-1.
    Targets have the inputs' dtype."""

    family = "embedding"
    losses = ("triplet_margin_loss", "triplet_margin_with_distance_loss", "margin_ranking_loss",
              "cosine_embedding_loss", "hinge_embedding_loss")
    ROW_LOSSES = ("triplet_margin_loss", "triplet_margin_with_distance_loss", "cosine_embedding_loss")

    def __init__(self, loss, shape, dtype, device, reduction="mean", swap=False, margin=None, p=2.0):
        super().__init__(loss, shape, dtype, device, reduction)
        if loss in self.ROW_LOSSES and len(self.shape) != 2:
            raise ValueError(f"{loss}: shape must be NxD, got {self.shape}")
        if swap and not loss.startswith("triplet"):
            raise ValueError(f"{loss} has no swap argument")
        if p != 2.0 and loss != "triplet_margin_loss":
            raise ValueError(f"{loss} has no p argument")
        self.swap, self.margin, self.p = swap, margin, p

    def extras(self):
        return "".join([f" p{self.p:g}" if self.p != 2.0 else "", " swap" if self.swap else "",
                        f" margin{self.margin:g}" if self.margin is not None else ""])

    def inputs(self):
        g = self.generator()
        dev, dt = self.device, self.dtype

        def randn(shape, grad=True):
            return torch.randn(shape, device=dev, dtype=dt, generator=g).requires_grad_(grad)

        def sign(shape):  # +-1 targets, half each
            return (torch.randint(0, 2, shape, device=dev, generator=g) * 2 - 1).to(dt)

        if self.loss.startswith("triplet"):
            return randn(self.shape), randn(self.shape), randn(self.shape)
        if self.loss == "cosine_embedding_loss":
            return randn(self.shape), randn(self.shape), sign(self.shape[:1])
        if self.loss == "margin_ranking_loss":
            return randn(self.shape), randn(self.shape), sign(self.shape)
        # hinge_embedding_loss: distances in [0, 2), so margin 1 is active for about half the -1 targets
        x = (2 * torch.rand(self.shape, device=dev, dtype=dt, generator=g)).requires_grad_()
        return x, sign(self.shape)

    def call(self, fn, *inputs):
        kw = {"reduction": self.reduction}
        if self.margin is not None:
            kw["margin"] = self.margin
        if self.loss.startswith("triplet"):
            kw["swap"] = self.swap
            if self.loss == "triplet_margin_loss" and self.p != 2.0:
                kw["p"] = self.p
        return fn(*inputs, **kw)

    def min_bytes(self, backward=True):
        """Each input read once [+ each input's gradient written once] [+ the loss written (+ its
        upstream gradient read) for reduction='none'; scalar outputs are not counted]:
          triplet:        3 reads of N*D [+ 3 gradient writes of N*D]      (+ none: N [+ N])
          cosine:         2 reads of N*D + target N [+ 2 gradient writes]  (+ none: N [+ N])
          margin_ranking: 2 reads + target read [+ 2 gradient writes], all N elements (+ none: N [+ N])
          hinge:          1 read + target read [+ 1 gradient write], all N elements (+ none: N [+ N])
        Targets have the inputs' dtype here (elem bytes each)."""
        e = self.elem
        if self.loss.startswith("triplet") or self.loss == "cosine_embedding_loss":
            rows, d = self.shape
            k = 3 if self.loss.startswith("triplet") else 2  # differentiable (N, D) inputs
            n = k * rows * d * e * (2 if backward else 1)
            if self.loss == "cosine_embedding_loss":
                n += rows * e  # target
            out = rows
        else:
            k = 2 if self.loss == "margin_ranking_loss" else 1  # differentiable inputs
            n = (k * (2 if backward else 1) + 1) * self.numel * e  # + 1: the target
            out = self.numel
        if self.reduction == "none":
            n += out * e * self.none_out_passes(backward)
        return n


class CtcCase(LossCase):
    """ctc_loss, blank 0, on log_probs (T, N, C): the log_softmax over C of standard-normal logits,
    made a leaf that requires grad (the log_softmax is not part of the timed step).
    targets: labels uniform in [1, C) (never the blank), padded (N, S) int64 on log_probs' device;
    target_lengths uniform in [floor(0.8 S), S]; input_lengths all T, or with random_input_lengths
    uniform in [floor(0.8 T), T]; both lengths int64 on the CPU (where torch reads them anyway).
    The integers come from a CPU generator seeded 0 and log_probs from the device's generator seeded 0:
    every implementation and every run gets the same tensors.
    cudnn=True: the inputs torch hands to cuDNN (aten/src/ATen/native/cudnn/LossCTC.cpp,
    _use_cudnn_ctc_loss: log_probs fp32 on CUDA, blank 0, targets 1-D concatenated int32 on the CPU,
    every input length == T, every target length < 256 and <= its input length): targets 1-D int32,
    lengths int32, on the CPU, fed to fastloss and torch alike. On CUDA the first inputs() checks that
    torch's autograd graph holds CudnnCtcLossBackward (a warning on stderr if not); on the CPU the
    case just measures the concatenated int32 format (named 'concat-i32' there).
    A dtype torch's CTC lacks (bf16, fp16): torch (and torch.compile) run on the fp32 log_probs
    that fastloss's are rounded from, fastloss on the dtype itself; the case's name says 'vs torch fp32'."""

    family = "ctc"
    losses = ("ctc_loss",)
    # aten._ctc_loss's outputs (log_alpha) have a data-dependent shape: torch.compile(fullgraph=True) fails
    # ("Unsupported: Dynamic shape operator"), so it is compiled with a graph break at the op (= eager op).
    compile_fullgraph = False

    def __init__(self, loss, T, N, C, S, dtype, device, reduction="mean", random_input_lengths=False, cudnn=False,
                 zero_infinity=False):
        super().__init__(loss, dtype, device, reduction)
        if C < 2:
            raise ValueError("ctc_loss: C must be >= 2 (blank + one label)")
        if S > (4 * T) // 5:
            raise ValueError(f"ctc_loss: S = {S} too long for T = {T} (S <= 0.8 T leaves frames for repeated labels)")
        if cudnn and random_input_lengths:
            raise ValueError("ctc_loss: cuDNN needs every input length == T (no random_input_lengths)")
        if cudnn and self.device.type == "cuda" and (dtype != torch.float32 or S >= 256):
            raise ValueError("ctc_loss: torch takes cuDNN only for fp32 log_probs and target lengths < 256")
        self.T, self.N, self.C, self.S = T, N, C, S
        self.random_input_lengths, self.cudnn, self.zero_infinity = random_input_lengths, cudnn, zero_infinity
        # torch's CTC kernels are fp32/fp64 only (CPU and CUDA): other dtypes are compared with torch in fp32
        self.torch_dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
        g = torch.Generator().manual_seed(0)
        self.target_lengths = torch.randint((8 * S) // 10, S + 1, (N,), generator=g)
        self.input_lengths = (torch.randint((8 * T) // 10, T + 1, (N,), generator=g) if random_input_lengths
                              else torch.full((N,), T, dtype=torch.long))
        self.padded_targets = torch.randint(1, C, (N, S), generator=g)
        self._torch_checked = False

    def shape_label(self):
        return f"T{self.T} N{self.N} C{self.C} S{self.S}"

    def elements(self):
        return self.T * self.N * self.C

    def extras(self):
        fmt = (" cudnn" if self.device.type == "cuda" else " concat-i32") if self.cudnn else ""
        return "".join([" il0.8" if self.random_input_lengths else "", fmt, " zinf" if self.zero_infinity else "",
                        " vs torch fp32" if self.torch_dtype != self.dtype else ""])

    def inputs(self):
        """(log_probs, targets, input_lengths, target_lengths, log_probs for torch or None)."""
        x = torch.randn(self.T, self.N, self.C, device=self.device, dtype=torch.float32, generator=self.generator())
        x = x.log_softmax(-1)
        lp = x.to(self.dtype).requires_grad_()
        ref = x.to(self.torch_dtype).requires_grad_() if self.torch_dtype != self.dtype else None
        del x
        if self.cudnn:
            tg = torch.cat([self.padded_targets[n, :l] for n, l in enumerate(self.target_lengths.tolist())])
            inputs = (lp, tg.int(), self.input_lengths.int(), self.target_lengths.int(), ref)
        else:
            inputs = (lp, self.padded_targets.to(self.device), self.input_lengths, self.target_lengths, ref)
        if self.cudnn and self.device.type == "cuda" and not self._torch_checked:
            self._torch_checked = True
            kernel = self.torch_kernel(inputs)
            if kernel != "cudnn":
                print(f"\nWARNING {self.name()}: torch took its {kernel} CTC kernel, not cuDNN", file=sys.stderr)
        return inputs

    def call(self, fn, log_probs, targets, input_lengths, target_lengths, log_probs_ref=None):
        if log_probs_ref is not None and fn is F.ctc_loss:  # torch eager and compiled: the fp32 copy
            log_probs = log_probs_ref
        return fn(log_probs, targets, input_lengths, target_lengths, blank=0, reduction=self.reduction,
                  zero_infinity=self.zero_infinity)

    def torch_kernel(self, inputs):
        """'cudnn' or 'native': which CTC kernel torch's autograd graph holds for these inputs."""
        out = self.call(F.ctc_loss, *inputs)
        todo, seen = [out.grad_fn], set()
        while todo:
            fn = todo.pop()
            if fn is None or fn in seen:
                continue
            seen.add(fn)
            name = type(fn).__name__
            if "CtcLoss" in name:
                return "cudnn" if "Cudnn" in name else "native"
            todo += [f for f, _ in fn.next_functions]
        return "unknown"

    def min_bytes(self, backward=True):
        """log_probs read once [+ its gradient written once] + the targets read (N*S int64 padded;
        sum(target_lengths) int32 concatenated) [+ the per-sample loss written (+ its upstream gradient
        read) for reduction='none']. Lengths (host-side) are not counted. CTC is latency/compute bound
        (a T-step recursion over 2S+1 states), not bandwidth bound: the figure is for comparison only."""
        e = self.elem
        n = self.T * self.N * self.C * e * (2 if backward else 1)
        n += int(self.target_lengths.sum()) * 4 if self.cudnn else self.N * self.S * 8
        if self.reduction == "none":
            n += self.N * e * self.none_out_passes(backward)
        return n


class MarginRowsCase(LossCase):
    """The margin_rows family on (rows, classes) scores requiring grad.
    multi_margin_loss: target (rows,) int64 class indices uniform in [0, classes); optional p=2, class weights.
    multilabel_margin_loss: target (rows, classes) int64: `targets` distinct classes per row, then -1 (the
    rest of the row -1 too). torch's CPU kernels take float32/float64 only."""

    family = "margin_rows"
    losses = ("multi_margin_loss", "multilabel_margin_loss")

    def __init__(self, loss, rows, classes, dtype, device, reduction="mean", targets=8, p=1, weight=False):
        super().__init__(loss, dtype, device, reduction)
        if loss == "multilabel_margin_loss" and (p != 1 or weight):
            raise ValueError("multilabel_margin_loss has no p or weight argument")
        self.rows, self.classes, self.targets = rows, classes, min(targets, classes)
        self.p, self.weight = p, weight

    def shape_label(self):
        return f"{self.rows}x{self.classes}"

    def elements(self):
        return self.rows * self.classes

    def extras(self):
        if self.loss == "multilabel_margin_loss":
            return f" K{self.targets}"
        return "".join([f" p{self.p}" if self.p != 1 else "", " w" if self.weight else ""])

    def inputs(self):
        g = self.generator()
        dev = self.device
        x = torch.randn(self.rows, self.classes, device=dev, dtype=self.dtype, generator=g).requires_grad_()
        w = torch.rand(self.classes, device=dev, dtype=self.dtype, generator=g) + 0.5 if self.weight else None
        if self.loss == "multi_margin_loss":
            return x, torch.randint(0, self.classes, (self.rows,), device=dev, generator=g), w
        t = torch.full((self.rows, self.classes), -1, dtype=torch.long, device=dev)
        order = torch.rand(self.rows, self.classes, device=dev, generator=g).argsort(1)
        t[:, :self.targets] = order[:, :self.targets]
        return x, t, w

    def call(self, fn, x, t, w):
        if self.loss == "multi_margin_loss":
            return fn(x, t, p=self.p, weight=w, reduction=self.reduction)
        return fn(x, t, reduction=self.reduction)

    def min_bytes(self, backward=True):
        """Scores read once [+ their gradient written once] + the targets read (rows int64 for
        multi_margin, rows x classes int64 for multilabel: every entry is range-checked, as torch's CPU
        kernel does) (+ the class weights) [+ the per-row loss written (+ its upstream gradient read) for
        reduction='none']. multilabel is O(K C) compute per row on top (K listed classes)."""
        e, n = self.elem, self.rows * self.classes
        b = n * e * (2 if backward else 1)
        b += self.rows * 8 if self.loss == "multi_margin_loss" else n * 8
        if self.weight:
            b += self.classes * e
        if self.reduction == "none":
            b += self.rows * e * self.none_out_passes(backward)
        return b


FAMILIES = {c.family: c for c in (CrossEntropyCase, RegressionCase, EmbeddingCase, CtcCase, BinaryCase, MarginRowsCase)}
LOSS_FAMILY = {loss: c for c in FAMILIES.values() for loss in c.losses}


def loss_name(s):
    """Accept 'mse' for 'mse_loss', 'triplet_margin' for 'triplet_margin_loss'."""
    s = s.strip()
    if s in LOSS_FAMILY:
        return s
    if s + "_loss" in LOSS_FAMILY:
        return s + "_loss"
    raise ValueError(f"unknown loss {s!r}; known: {', '.join(LOSS_FAMILY)}")


# Sizes of the default cases. CUDA: large enough to be bandwidth-bound (>= 64 MB per tensor; ctc_loss,
# latency/compute-bound, takes the CUDA shape TxNxCxS). CPU (2 cores in CI): the whole default
# table must finish in about a minute.
DEFAULT_SHAPES = {
    "cuda": {"cross_entropy": (8192, 32000), "regression": (64 * 2**20,), "embedding_rows": (65536, 512),
             "embedding_elementwise": (16 * 2**20,), "ctc": (1000, 64, 64, 200), "probabilistic": (16384, 1024),
             "multi_margin_loss": (65536, 1000), "multilabel_margin_loss": (65536, 256)},
    "cpu": {"cross_entropy": (1024, 32000), "regression": (4 * 2**20,), "embedding_rows": (4096, 512),
            "embedding_elementwise": (2**20,), "ctc": (200, 16, 32, 50), "probabilistic": (1024, 1024),
            "multi_margin_loss": (4096, 1000), "multilabel_margin_loss": (4096, 256)},
}


def make_case(loss, shape, dtype, device, reduction="mean", swap=False):
    """A case for any known loss; shape None takes the device's default size for that loss."""
    device = torch.device(device)
    cls = LOSS_FAMILY[loss]
    sizes = DEFAULT_SHAPES["cuda" if device.type == "cuda" else "cpu"]
    if cls is CrossEntropyCase:
        rows, classes = shape or sizes["cross_entropy"]
        return CrossEntropyCase(loss, rows, classes, dtype, device, reduction=reduction)
    if cls is RegressionCase:
        return RegressionCase(loss, shape or sizes["regression"], dtype, device, reduction=reduction)
    if cls is BinaryCase:
        return BinaryCase(loss, shape or sizes["probabilistic"], dtype, device, reduction=reduction)
    if cls is CtcCase:
        shape = shape or sizes["ctc"]
        if len(shape) != 4:
            raise ValueError(f"{loss}: --shape must be TxNxCxS (e.g. 200x16x32x50), got {shape}")
        return CtcCase(loss, *shape, dtype, device, reduction=reduction)
    if cls is MarginRowsCase:
        shape = shape or sizes[loss]
        if len(shape) != 2:
            raise ValueError(f"{loss}: --shape must be NxC (e.g. 4096x1000), got {shape}")
        return MarginRowsCase(loss, *shape, dtype, device, reduction=reduction)
    key = "embedding_rows" if loss in EmbeddingCase.ROW_LOSSES else "embedding_elementwise"
    return EmbeddingCase(loss, shape or sizes[key], dtype, device, reduction=reduction, swap=swap)


def default_cases(device, family="all", none_backward="sum"):
    """The built-in cases of `family` ('all': every family), each family's typical mean cases first,
    then its reduction='none' variants, whose backward is reached as `none_backward` says
    (LossCase.NONE_BACKWARDS)."""
    cases = _default_cases(torch.device(device), family)
    for c in cases:
        if c.reduction == "none":
            c.none_backward = none_backward
    return cases


def _default_cases(device, family):
    fp32, bf16 = torch.float32, torch.bfloat16
    none = "none"
    cases = []
    if device.type == "cuda":
        if family in ("all", "cross_entropy"):
            cases += [
                CrossEntropyCase("cross_entropy", 8192, 128256, bf16, device),
                CrossEntropyCase("cross_entropy", 16384, 32000, fp32, device),
                CrossEntropyCase("cross_entropy", 8192, 128256, bf16, device, weight=True, ignore_frac=0.1,
                                 label_smoothing=0.1),
                CrossEntropyCase("cross_entropy", 32768, 50257, bf16, device),
                CrossEntropyCase("cross_entropy", 65536, 128, fp32, device),
                CrossEntropyCase("nll_loss", 16384, 32000, fp32, device),
                CrossEntropyCase("cross_entropy", 16384, 32000, fp32, device, reduction=none),
                CrossEntropyCase("nll_loss", 16384, 32000, fp32, device, reduction=none),
            ]
        if family in ("all", "regression"):
            n = 64 * 2**20
            cases += [RegressionCase(loss, n, dtype, device) for dtype in (fp32, bf16) for loss in
                      ("smooth_l1_loss", "mse_loss", "l1_loss", "huber_loss")]
            cases += [RegressionCase(loss, 16 * 2**20, fp32, device) for loss in ("soft_margin_loss", "kl_div")]
            cases += [RegressionCase(loss, n, fp32, device, reduction=none) for loss in ("smooth_l1_loss", "mse_loss")]
        if family in ("all", "embedding"):
            cases += [
                EmbeddingCase("triplet_margin_loss", (65536, 512), fp32, device),
                EmbeddingCase("triplet_margin_loss", (65536, 512), fp32, device, swap=True),
                EmbeddingCase("cosine_embedding_loss", (65536, 512), fp32, device),
                EmbeddingCase("margin_ranking_loss", 16 * 2**20, fp32, device),
                EmbeddingCase("hinge_embedding_loss", 16 * 2**20, fp32, device),
                EmbeddingCase("triplet_margin_loss", (65536, 512), fp32, device, reduction=none),
                EmbeddingCase("margin_ranking_loss", 16 * 2**20, fp32, device, reduction=none),
            ]
        if family in ("all", "ctc"):
            cases += [
                CtcCase("ctc_loss", 1000, 64, 64, 200, fp32, device),
                CtcCase("ctc_loss", 500, 32, 5000, 100, fp32, device),
                CtcCase("ctc_loss", 1000, 64, 64, 200, fp32, device, cudnn=True),  # torch: cuDNN
                CtcCase("ctc_loss", 500, 32, 5000, 100, bf16, device),  # torch: fp32 (no bf16 CTC)
                CtcCase("ctc_loss", 1000, 64, 64, 200, fp32, device, reduction=none),
            ]
        if family in ("all", "probabilistic"):  # the 16M elements
            cases += [BinaryCase(loss, (16384, 1024), dtype, device) for dtype in (fp32, bf16)
                      for loss in BinaryCase.losses]
            cases += [BinaryCase(loss, (16384, 1024), fp32, device, reduction=none)
                      for loss in ("binary_cross_entropy_with_logits", "sigmoid_focal_loss")]
        if family in ("all", "margin_rows"):
            cases += [
                MarginRowsCase("multi_margin_loss", 65536, 1000, fp32, device),
                MarginRowsCase("multi_margin_loss", 65536, 1000, bf16, device, p=2, weight=True),
                MarginRowsCase("multi_margin_loss", 8192, 32000, fp32, device),
                MarginRowsCase("multilabel_margin_loss", 65536, 256, fp32, device),
                MarginRowsCase("multilabel_margin_loss", 8192, 4096, fp32, device, targets=32),
                MarginRowsCase("multi_margin_loss", 65536, 1000, fp32, device, reduction=none),
            ]
        return cases
    if family in ("all", "cross_entropy"):
        cases += [
            CrossEntropyCase("cross_entropy", 1024, 32000, fp32, device),
            CrossEntropyCase("cross_entropy", 1024, 32000, fp32, device, weight=True, ignore_frac=0.1,
                             label_smoothing=0.1),
            CrossEntropyCase("cross_entropy", 256, 32000, bf16, device),
            CrossEntropyCase("cross_entropy", 8192, 100, fp32, device),
            CrossEntropyCase("nll_loss", 1024, 32000, fp32, device),  # issue 19: log-probabilities 1024x32000
            CrossEntropyCase("cross_entropy", 1024, 32000, fp32, device, reduction=none),
            CrossEntropyCase("nll_loss", 1024, 32000, fp32, device, reduction=none),
        ]
    if family in ("all", "regression"):
        cases += [RegressionCase(loss, 4 * 2**20, fp32, device)
                  for loss in ("smooth_l1_loss", "mse_loss", "l1_loss", "huber_loss", "soft_margin_loss", "kl_div")]
        # issue 19: smooth_l1_loss(reduction='none').sum().backward() at 4M elements
        cases += [RegressionCase(loss, 4 * 2**20, fp32, device, reduction=none)
                  for loss in ("smooth_l1_loss", "mse_loss")]
    if family in ("all", "embedding"):
        cases += [
            EmbeddingCase("triplet_margin_loss", (4096, 512), fp32, device),
            EmbeddingCase("cosine_embedding_loss", (4096, 512), fp32, device),
            EmbeddingCase("margin_ranking_loss", 2**20, fp32, device),
            EmbeddingCase("hinge_embedding_loss", 2**20, fp32, device),
            EmbeddingCase("triplet_margin_loss", (4096, 512), fp32, device, reduction=none),
            EmbeddingCase("margin_ranking_loss", 2**20, fp32, device, reduction=none),
        ]
    if family in ("all", "ctc"):
        cases += [CtcCase("ctc_loss", T, N, C, S, fp32, device)
                  for T, N, C, S in ((200, 16, 32, 50), (100, 8, 32, 25), (500, 32, 64, 100))]
        cases += [CtcCase("ctc_loss", 200, 16, 32, 50, fp32, device, reduction=none)]
    if family in ("all", "probabilistic"):
        cases += [BinaryCase(loss, (1024, 1024), fp32, device) for loss in BinaryCase.losses]
        cases += [BinaryCase(loss, (1024, 1024), fp32, device, reduction=none)
                  for loss in ("binary_cross_entropy_with_logits", "sigmoid_focal_loss")]
    if family in ("all", "margin_rows"):
        cases += [
            MarginRowsCase("multi_margin_loss", 4096, 1000, fp32, device),
            MarginRowsCase("multi_margin_loss", 4096, 1000, fp32, device, p=2, weight=True),
            MarginRowsCase("multilabel_margin_loss", 4096, 256, fp32, device),
            MarginRowsCase("multi_margin_loss", 4096, 1000, fp32, device, reduction=none),
        ]
    return cases


# Sizes --plot sweeps: factors of each loss's default (or --shape) size, scaling the batch dimension
# (rows; ctc_loss: N; elementwise losses: the element count). CPU: three sizes over 64x, so that a
# sweep of every loss stays near two minutes on 2 cores.
PLOT_SCALES = {"cpu": (1 / 64, 1 / 8, 1.0), "cuda": (1 / 256, 1 / 32, 1 / 4, 1.0)}


def case_dims(case):
    """The case's shape as make_case takes it (ROWSxCLASSES, NxD, TxNxCxS or the input's shape)."""
    if isinstance(case, ShapedCase):
        return case.shape
    if isinstance(case, CtcCase):
        return (case.T, case.N, case.C, case.S)
    return (case.rows, case.classes)


def sweep_cases(losses, shape, dtype, device, reduction="mean", scales=None, swap=False):
    """For each loss, make_case at `shape` (None: the device's default size) scaled by each factor in
    `scales` along its batch dimension (ctc_loss: N, others: the first)."""
    device = torch.device(device)
    scales = sorted(scales or PLOT_SCALES["cuda" if device.type == "cuda" else "cpu"])
    cases = []
    for loss in losses:
        base = list(case_dims(make_case(loss, shape, dtype, device, reduction=reduction, swap=swap)))
        dim = 1 if LOSS_FAMILY[loss] is CtcCase else 0
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
        if bw:
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
            line += f" {r['gbps']:.0f} | {100 * r['bw_frac']:.0f}% |"
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
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
    ap.add_argument("--shape", help="ROWSxCLASSES (cross_entropy, nll_loss, multi_margin, multilabel_margin), NxD (triplet, cosine), TxNxCxS "
                                    "(ctc_loss) or the input's shape / element count (elementwise losses), "
                                    "e.g. 8192x128256, 64M, 200x16x32x50")
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
            losses = list(FAMILIES[args.family].losses)
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
            cases = [make_case(l, shape, dtype, device, reduction=reduction, swap=swap and l.startswith("triplet"))
                     for l in losses]
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


if __name__ == "__main__":
    main()
