"""fastloss.patch(module) swaps the torch.nn losses of a module tree in place; fastloss.patch() makes
torch.nn.functional's losses and the torch.nn loss classes resolve to fastloss process-wide, and
fastloss.unpatch() restores torch. A small model trained a few steps gives the same losses both ways."""
import sys
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastloss
from fastloss.patch import PATCHED_FUNCTIONS, PATCHED_MODULES

TORCH_FUNCTIONS = {n: getattr(F, n) for n in PATCHED_FUNCTIONS}
TORCH_CLASSES = {n: getattr(nn, n) for n in PATCHED_MODULES}


@pytest.fixture
def restore():
    yield
    fastloss.unpatch()
    assert not fastloss.is_patched()


class MyMSE(nn.MSELoss):  # user subclass with its own forward: never swapped
    def forward(self, a, b):
        return super().forward(a, b) * 2


class Model(nn.Module):
    def __init__(self, ce):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 5))
        self.ce = ce
        self.heads = nn.ModuleDict({"reg": nn.SmoothL1Loss(beta=0.5), "custom": MyMSE()})

    def forward(self, x, y, z):
        out = self.net(x)
        return self.ce(out, y) + self.heads["reg"](out[:, :2], z) + F.mse_loss(out[:, 2:4], z) * 0.5


def batches(steps=4):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(12, 6, generator=g), torch.randint(0, 5, (12,), generator=g),
             torch.randn(12, 2, generator=g)) for _ in range(steps)]


def train(model, data):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for x, y, z in data:
        opt.zero_grad()
        loss = model(x, y, z)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_patch_module_swaps_in_place(restore):
    w = torch.rand(5)
    ce = nn.CrossEntropyLoss(weight=w, label_smoothing=0.1, ignore_index=3)
    model = Model(ce)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert fastloss.patch(model) is model
    assert model.ce is ce and type(ce) is fastloss.CrossEntropyLoss  # same object, fastloss class
    assert isinstance(ce, nn.CrossEntropyLoss)
    assert ce.weight is w and ce.label_smoothing == 0.1 and ce.ignore_index == 3
    assert type(model.heads["reg"]) is fastloss.SmoothL1Loss and model.heads["reg"].beta == 0.5
    assert type(model.heads["custom"]) is MyMSE  # a user subclass keeps its forward
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    # the root itself, when it is a loss
    root = nn.CTCLoss(blank=2, zero_infinity=True)
    assert fastloss.patch(root) is root and type(root) is fastloss.CTCLoss and root.blank == 2
    assert not fastloss.is_patched()  # patch(module) leaves the process alone
    with pytest.raises(TypeError, match="torch.nn.Module"):
        fastloss.patch(42)


def test_patch_module_runs_fastloss_kernels(restore):
    model = fastloss.patch(Model(nn.CrossEntropyLoss(label_smoothing=0.1)))
    x, y, z = batches(1)[0]
    with torch.profiler.profile() as prof:
        model(x, y, z).backward()
    names = {e.name for e in prof.events()}
    assert "fastloss::cross_entropy" in names and "fastloss::smooth_l1_loss" in names
    assert not any(n in names for n in ("aten::cross_entropy_loss", "aten::smooth_l1_loss", "aten::nll_loss_nd"))


def test_patch_process_and_unpatch(restore):
    old_instance = nn.MSELoss()  # built before the patch: a torch class that calls F at run time
    fastloss.patch()
    assert fastloss.is_patched()
    for name in PATCHED_FUNCTIONS:
        assert getattr(torch.nn.functional, name) is getattr(fastloss.functional, name), name
    for name in PATCHED_MODULES:
        home = sys.modules[getattr(fastloss, name).__mro__[1].__module__]  # where torch defines it
        for ns in (nn, nn.modules, home):
            assert getattr(ns, name) is getattr(fastloss, name), (ns.__name__, name)
    assert type(nn.CrossEntropyLoss()) is fastloss.CrossEntropyLoss
    a, b = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3)
    with torch.profiler.profile() as prof:
        old_instance(a, b).backward()
        torch.nn.functional.l1_loss(a, b).backward()
    names = {e.name for e in prof.events()}
    assert {"fastloss::mse_loss", "fastloss::l1_loss"} <= names
    assert "aten::mse_loss" not in names and "aten::l1_loss" not in names
    fastloss.patch()  # idempotent
    fastloss.unpatch()
    for name in PATCHED_FUNCTIONS:
        assert getattr(torch.nn.functional, name) is TORCH_FUNCTIONS[name], name
    for name in PATCHED_MODULES:
        for ns in (nn, nn.modules, nn.modules.loss):
            assert getattr(ns, name) is TORCH_CLASSES[name], (ns.__name__, name)
    assert type(nn.CrossEntropyLoss()) is TORCH_CLASSES["CrossEntropyLoss"]


@pytest.mark.parametrize("how", ["process", "module"])
def test_training_same_losses(restore, how):
    """A few SGD steps of the same model on the same data: torch's losses, then fastloss's (patched
    process-wide or per module tree), equal to float32 rounding at every step."""
    data = batches()
    ref = train(Model(nn.CrossEntropyLoss(weight=torch.linspace(0.5, 1.5, 5), label_smoothing=0.1)), data)
    if how == "process":
        fastloss.patch()
        model = Model(nn.CrossEntropyLoss(weight=torch.linspace(0.5, 1.5, 5), label_smoothing=0.1))
        assert type(model.ce) is fastloss.CrossEntropyLoss
    else:
        model = fastloss.patch(Model(nn.CrossEntropyLoss(weight=torch.linspace(0.5, 1.5, 5), label_smoothing=0.1)))
    got = train(model, data)
    assert got != [] and len(got) == len(ref)
    torch.testing.assert_close(torch.tensor(got), torch.tensor(ref), rtol=1e-5, atol=1e-6)
    assert ref[-1] < ref[0]  # the model trains
