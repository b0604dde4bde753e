"""Timing: medians of interleaved rounds (CUDA events on the GPU, wall clock on the CPU), copy
bandwidth, peak memory, and the forward+backward / forward-only closures the cases are timed through."""
import statistics
import time

import torch

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

