"""pytest plugin for the GPU check: keep only the tests that exercise CUDA (CPU-only cases are CI's).

    PYTHONPATH=tools python -m pytest -p pytest_cuda_only tests ...

A test is kept when it is parametrized over a device and that device is CUDA (tests/conftest.py's
device_params() / DEVICES give ids like test_x[cuda-...]), or, without a device parameter, when its
name says cuda or it carries the requires_cuda skip mark (e.g. test_device_mismatch). `-k "cuda"`
alone would miss the latter and keep CPU cases of tests whose name mentions cuda.
"""


def _is_cuda(item):
    callspec = getattr(item, "callspec", None)
    if callspec is not None:
        for name in ("device", "dev"):
            if name in callspec.params:
                return str(callspec.params[name]).startswith("cuda")
    if "cuda" in item.name.lower():
        return True
    for mark in item.iter_markers("skipif"):
        reason = str(mark.kwargs.get("reason", ""))
        if "CUDA" in reason or "GPU" in reason:
            return True
    return False


def pytest_collection_modifyitems(config, items):
    keep = [it for it in items if _is_cuda(it)]
    drop = [it for it in items if not _is_cuda(it)]
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep
