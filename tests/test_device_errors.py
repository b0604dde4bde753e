"""Target validation without host synchronization (csrc/common/device_errors.h).

On CUDA a bad target (or a binary_cross_entropy input outside [0, 1]) is recorded by the kernel and
reported from the device: the call returns without waiting for the GPU, the bad rows are NaN, and the
error -- the op, the bad value, its position -- is raised by the next fastloss CUDA call or by
fastloss.check_errors(). 'strict' raises in the call itself; 'off' only gives NaN. The CPU always
raises at once."""
import re

import pytest
import torch
import torch.nn.functional as F

import fastloss
from conftest import HAS_CUDA, requires_cuda

FL = fastloss.functional


@pytest.fixture
def validation():
    """Sets a validation mode for one test and restores the previous one."""
    previous = []

    def set_mode(mode):
        previous.append(fastloss.set_target_validation(mode))

    yield set_mode
    if previous:
        fastloss.set_target_validation(previous[0])


def test_modes_round_trip(validation):
    validation("async")
    assert fastloss.set_target_validation("strict") == "async"
    assert fastloss.set_target_validation(False) == "strict"
    assert fastloss.set_target_validation(True) == "off"
    assert fastloss.set_target_validation("off") == "async"
    assert fastloss.set_target_validation("async") == "off"


def test_bad_mode_refused(validation):
    validation("async")
    for bad in ("sync", "", 2, None):
        with pytest.raises(ValueError, match="mode must be one of"):
            fastloss.set_target_validation(bad)
    assert fastloss.set_target_validation("async") == "async"  # unchanged by the refused calls


@pytest.mark.parametrize("mode", ["off", "async", "strict"])
def test_cpu_raises_at_once_in_every_mode(validation, mode):
    """The CPU checks in the call whatever the mode (the switch is about CUDA's synchronization)."""
    validation(mode)
    with pytest.raises(IndexError, match="Target 7 is out of bounds"):
        FL.cross_entropy(torch.randn(3, 5), torch.tensor([0, 7, 1]))
    fastloss.check_errors()  # nothing recorded: returns
    assert torch.isfinite(FL.cross_entropy(torch.randn(3, 5), torch.tensor([0, 4, 1])))


def test_check_errors_op_schema():
    schema = str(torch.ops.fastloss._check_errors.default._schema)
    assert schema == "fastloss::_check_errors(bool wait=True) -> ()", schema


# ------------------------------------------------------------------------------------------- CUDA
def _family_cases():
    """name: (bad call, exception type, message regex naming the value and its position, a check that
    the bad call's result has NaN where the bad element is)."""
    def ce():
        x = torch.randn(6, 10, device="cuda")
        t = torch.tensor([1, 2, 10, 3, 4, 5], device="cuda")
        return FL.cross_entropy(x, t, reduction="none"), 2

    def nll():
        x = torch.randn(6, 10, device="cuda").log_softmax(1)
        t = torch.tensor([1, 2, 3, -3, 4, 5], device="cuda")
        return FL.nll_loss(x, t, reduction="none"), 3

    def multi_margin():
        x = torch.randn(5, 7, device="cuda")
        t = torch.tensor([0, 1, 2, 3, 9], device="cuda")
        return FL.multi_margin_loss(x, t, reduction="none"), 4

    def multilabel():
        x = torch.randn(4, 6, device="cuda")
        t = torch.tensor([[0, 1, -1, 0, 0, 0], [2, -1, 0, 0, 0, 0], [3, 6, -1, 0, 0, 0], [-1, 0, 0, 0, 0, 0]],
                         device="cuda")
        return FL.multilabel_margin_loss(x, t, reduction="none"), 2

    def bce():
        x = torch.rand(3, 4, device="cuda")
        x[1, 2] = 1.5
        return FL.binary_cross_entropy(x, torch.rand(3, 4, device="cuda"), reduction="sum"), None

    def ctc():
        lp = torch.randn(12, 3, 5, device="cuda").log_softmax(2)
        t = torch.tensor([[1, 2, 3], [1, 5, 2], [4, 4, 1]], device="cuda")
        return FL.ctc_loss(lp, t, [12, 12, 12], [3, 3, 3], reduction="none"), 1

    return {
        "cross_entropy": (ce, IndexError, r"fastloss\.cross_entropy: Target 10 is out of bounds.*position 2\)"),
        "nll_loss": (nll, IndexError, r"fastloss\.nll_loss: Target -3 is out of bounds.*position 3\)"),
        "multi_margin_loss": (multi_margin, RuntimeError, r"target 9 is out of range.*position 4\)"),
        "multilabel_margin_loss": (multilabel, RuntimeError, re.escape("target 6 at [2, 1] is out of range")),
        "binary_cross_entropy": (
            bce, RuntimeError, re.escape("all elements of input should be between 0 and 1 (input.flatten()[6] = 1.5)")),
        "ctc_loss": (ctc, IndexError, "targets holds 5 at sample 1, label 1"),
    }


FAMILIES = list(_family_cases())


@requires_cuda
@pytest.mark.parametrize("name", FAMILIES)
def test_async_error_raised_by_check_errors(validation, name):
    validation("async")
    call, exc, text = _family_cases()[name]
    loss, bad_row = call()  # returns: no host wait
    torch.cuda.synchronize()
    if bad_row is not None:
        assert torch.isnan(loss[bad_row]) and torch.isfinite(loss[torch.arange(len(loss)) != bad_row]).all()
    with pytest.raises(exc, match=text) as info:
        fastloss.check_errors()
    assert "earlier call" in str(info.value)
    fastloss.check_errors()  # raised once only


@requires_cuda
@pytest.mark.parametrize("name", FAMILIES)
def test_async_error_raised_by_next_call_then_cleared(validation, name):
    validation("async")
    call, exc, text = _family_cases()[name]
    call()
    torch.cuda.synchronize()
    x = torch.randn(4, 3, device="cuda")
    with pytest.raises(exc, match=text):
        FL.mse_loss(x, x)  # any fastloss CUDA op reports what an earlier kernel found
    torch.testing.assert_close(FL.mse_loss(x, 2 * x), F.mse_loss(x, 2 * x))


@requires_cuda
@pytest.mark.parametrize("name", FAMILIES)
def test_strict_raises_in_the_call(validation, name):
    validation("strict")
    call, exc, text = _family_cases()[name]
    with pytest.raises(exc, match=text):
        call()


@requires_cuda
@pytest.mark.parametrize("name", FAMILIES)
def test_off_records_nothing(validation, name):
    validation("off")
    call, _, _ = _family_cases()[name]
    call()
    torch.cuda.synchronize()
    fastloss.check_errors()


@requires_cuda
def test_backward_raises_a_forward_error(validation):
    validation("async")
    x = torch.randn(4, 5, device="cuda", requires_grad=True)
    loss = FL.cross_entropy(x, torch.tensor([0, 5, 1, 2], device="cuda"))
    torch.cuda.synchronize()
    with pytest.raises(IndexError, match="Target 5 is out of bounds"):
        loss.backward()


def _busy_stream():
    """Queues ~50 ms of GPU work on the current stream, so a call that waits for the GPU is seen."""
    torch.cuda._sleep(int(50e-3 * torch.cuda.get_device_properties(0).clock_rate * 1e3))


@requires_cuda
def test_first_error_wins_until_raised(validation):
    """A bad call finds the record of an earlier one and raises it before launching anything; two bad
    calls queued before either is raised keep the first error (the second is dropped)."""
    validation("async")
    x = torch.randn(3, 4, device="cuda")
    FL.cross_entropy(x, torch.tensor([0, 4, 1], device="cuda"))
    torch.cuda.synchronize()
    with pytest.raises(IndexError, match="Target 4 is out of bounds"):
        FL.cross_entropy(x, torch.tensor([0, 1, 9], device="cuda"))
    torch.cuda.synchronize()
    fastloss.check_errors()  # that call raised before launching its kernels: no new record
    _busy_stream()  # both bad calls are queued before the device has run either check
    FL.cross_entropy(x, torch.tensor([0, 1, 9], device="cuda"))
    FL.cross_entropy(x, torch.tensor([8, 1, 2], device="cuda"))
    with pytest.raises(IndexError, match="Target 9 is out of bounds"):
        fastloss.check_errors()
    fastloss.check_errors()


@requires_cuda
@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("mode", ["async", "strict"])
def test_no_host_wait_unless_strict(validation, name, mode):
    """Async validation returns while the GPU is still busy with earlier work; strict waits for it."""
    validation(mode)
    call, exc, text = _family_cases()[name]
    torch.cuda.synchronize()
    _busy_stream()
    if mode == "async":
        call()
        assert not torch.cuda.current_stream().query(), "the call waited for the GPU"
        torch.cuda.synchronize()
        with pytest.raises(exc, match=text):
            fastloss.check_errors()
    else:
        with pytest.raises(exc, match=text):
            call()
        assert torch.cuda.current_stream().query()


@requires_cuda
@pytest.mark.parametrize("good", [True, False])
def test_graph_capture_with_validation(validation, good):
    """A captured cross_entropy keeps its check: replays with a bad target record it."""
    validation("async")
    x = torch.randn(8, 10, device="cuda")
    t = torch.randint(0, 10, (8,), device="cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        FL.cross_entropy(x, t)  # warm-up outside capture
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = FL.cross_entropy(x, t, reduction="none")
    if not good:
        t[5] = 12
    graph.replay()
    torch.cuda.synchronize()
    if good:
        torch.testing.assert_close(out, F.cross_entropy(x, t, reduction="none"))
        fastloss.check_errors()
    else:
        assert torch.isnan(out[5])
        with pytest.raises(IndexError, match=r"Target 12 is out of bounds.*position 5\)"):
            fastloss.check_errors()


@requires_cuda
@pytest.mark.compile
def test_compile_reduce_overhead_with_validation(validation):
    validation("async")
    x = torch.randn(16, 10, device="cuda")
    t = torch.randint(0, 10, (16,), device="cuda")
    f = torch.compile(lambda a, b: FL.cross_entropy(a, b), mode="reduce-overhead")
    for _ in range(3):
        got = f(x, t)
    torch.testing.assert_close(got, F.cross_entropy(x, t))
    fastloss.check_errors()


@pytest.mark.skipif(HAS_CUDA, reason="checks a machine without a visible GPU")
def test_check_errors_without_cuda_calls_returns():
    """No CUDA call made: nothing to report, whether it waits or not."""
    assert fastloss.check_errors(wait=True) is None
    assert fastloss.check_errors(wait=False) is None
