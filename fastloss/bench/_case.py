"""The base of every benchmark case (one loss at one size and dtype) and the size formatting the
command line shares. A case answers for itself: its inputs, its call of fastloss's or torch's
function, the minimal bytes it must move, its name, its default size and how --shape builds it."""
import torch

import fastloss

from .. import _losses
from ._timing import fwd_bwd

DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


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
    minimal bytes a forward (+ backward) must move (`min_bytes`).

    The case class of each loss is named in its row of fastloss/_losses.py (`bench`); its family is
    the loss's csrc family there. A family's base class (RegressionCase, BinaryCase, ...) also builds
    the case of any loss its subclasses serve: RegressionCase("smooth_l1_loss", ...) is a SmoothL1Case.
    `losses` (every loss a class or its subclasses serve) is filled in from the table when the family
    modules are registered (fastloss/bench/__init__.py)."""

    losses = ()
    family = None  # the csrc family of its losses (register(): from the table)
    compile_fullgraph = True  # torch_compiled: fullgraph=True (False where torch's op cannot be captured whole)
    # the default size (as from_dims takes it) on each device type: DEFAULT_DIMS["cuda"], ["cpu"]
    DEFAULT_DIMS = None
    batch_dim = 0  # the dimension of dims() that --plot scales
    bandwidth_bound = True  # False: compute-bound (GEMMs), no GB/s or bandwidth fraction in the table

    # How backward reaches a reduction='none' loss: "grad" = loss.backward(g) with a fixed random g of the
    # loss's shape (the upstream gradient of a weighted or masked reduction done by the caller);
    # "sum" = loss.sum().backward() (torch hands the loss an expanded scalar: stride 0).
    NONE_BACKWARDS = ("grad", "sum")

    _by_loss = {}  # loss name -> its case class (register())

    @classmethod
    def register(cls, loss, family):
        """Make `cls` the case class of `loss` (from the loss's row in the table), add the loss to the
        `losses` of cls and every case class above it, and set `family` on cls and the classes above it
        in its family's module."""
        LossCase._by_loss[loss] = cls
        for c in cls.__mro__:
            if not issubclass(c, LossCase):
                continue
            if loss not in c.__dict__.get("losses", ()):
                c.losses = c.__dict__.get("losses", ()) + (loss,)
            if c.__module__ == cls.__module__:
                if c.__dict__.get("family", family) != family:
                    raise ValueError(f"{c.__name__} serves losses of two families: {c.family}, {family}")
                c.family = family

    def __new__(cls, loss=None, *args, **kwargs):
        """The case class of `loss` when it is a subclass of cls (a family's base class builds any of
        its losses' cases)."""
        sub = LossCase._by_loss.get(loss)
        return super().__new__(sub if sub is not None and issubclass(sub, cls) else cls)

    def __init__(self, loss, dtype, device, reduction="mean"):
        if loss not in self.losses:
            raise ValueError(f"{type(self).__name__}: unknown loss {loss!r} (one of {', '.join(self.losses)})")
        self.loss, self.dtype, self.device, self.reduction = loss, dtype, torch.device(device), reduction
        self.none_backward = "grad"  # see NONE_BACKWARDS; "grad" is what benchmarks/ has always timed

    # how the command line builds a case: --shape (or the default size) as dims
    @classmethod
    def default_dims(cls, device):
        """The default size on `device` (a torch.device), as from_dims takes it."""
        return cls.DEFAULT_DIMS["cuda" if device.type == "cuda" else "cpu"]

    # (form, example) of --shape for a case whose constructor takes the sizes one by one, e.g. ("ROWSxCLASSES",
    # "4096x1000"); None: the constructor takes the dims tuple itself (and checks it)
    SHAPE = None

    @classmethod
    def from_dims(cls, loss, dims, dtype, device, reduction="mean", swap=False):
        """The case of `loss` at `dims` (--shape: a tuple of ints); `swap` is the --swap flag, which
        only the triplet losses take. Raises ValueError for dims of the wrong form."""
        if cls.SHAPE is None:
            return cls(loss, dims, dtype, device, reduction=reduction)
        form, example = cls.SHAPE
        if len(dims) != form.count("x") + 1:
            raise ValueError(f"{loss}: --shape must be {form} (e.g. {example}), got {dims}")
        return cls(loss, *dims, dtype, device, reduction=reduction)

    def dims(self):
        """This case's size as from_dims takes it."""
        return self.shape

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
        if impl == "fastloss":
            return getattr(fastloss.functional, self.loss, None)
        return _losses.by_name(self.loss).torch_function  # torch's own, or the table's reference

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




class RowsClassesCase(LossCase):
    """A case on (rows, classes) scores: --shape ROWSxCLASSES (cross_entropy, nll_loss, the margin_rows losses)."""

    SHAPE = ("ROWSxCLASSES", "4096x1000")

    def __init__(self, loss, rows, classes, dtype, device, reduction="mean"):
        super().__init__(loss, dtype, device, reduction)
        self.rows, self.classes = rows, classes

    def dims(self):
        return (self.rows, self.classes)

    def shape_label(self):
        return f"{self.rows}x{self.classes}"

    def elements(self):
        return self.rows * self.classes
