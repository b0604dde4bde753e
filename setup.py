"""Build fastloss._C: CPU kernels always, CUDA kernels whenever torch is a CUDA build and nvcc exists.

The CUDA decision never looks at torch.cuda.is_available(): CUDA sources compile and link on a
machine without a GPU. FASTLOSS_CUDA=0|1 forces the choice. CUDA_HOME and the CUDA library headers
shipped inside torch's wheels (site-packages/nvidia/*/include) are found without any variable set.
"""
import glob
import os
import re
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _is_toolkit(path):
    return bool(path) and os.path.isfile(os.path.join(path, "bin", "nvcc")) and os.path.isfile(
        os.path.join(path, "include", "cuda_runtime.h"))


def find_cuda_home():
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if _is_toolkit(os.environ.get(var)):
            return os.environ[var]
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = os.path.realpath(nvcc)
        candidates.append(os.path.dirname(os.path.dirname(real)))
        # nvcc on PATH may be a small wrapper script that execs the real one: read the path out of it.
        try:
            if os.path.getsize(real) < 64 * 1024:
                with open(real, errors="ignore") as f:
                    for m in re.finditer(r"(/[^\s\"']+)/bin/nvcc", f.read()):
                        candidates.append(m.group(1))
        except OSError:
            pass
    candidates.append("/usr/local/cuda")
    candidates += sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for c in candidates:
        if _is_toolkit(c):
            return c
    return None


def wheel_cuda_include_dirs():
    """Include folders of the nvidia-* wheels torch depends on (cublas_v2.h, cusparse.h, ...)."""
    dirs = []
    for base in sys.path:
        for inc in sorted(glob.glob(os.path.join(base, "nvidia", "*", "include"))):
            if os.path.isdir(inc) and inc not in dirs:
                dirs.append(inc)
    return dirs


def read_list(name):
    """The entries of csrc/<name>: whitespace-separated, `#` starts a comment (the format CMakeLists.txt reads)."""
    with open(os.path.join(ROOT, "csrc", name)) as f:
        return [w for line in f for w in line.split("#", 1)[0].split()]


def source_files(cuda):
    """csrc/sources.txt's patterns expanded: the C++ files sorted, then (when `cuda`) the .cu files sorted."""
    cpp, cu = set(), set()
    for pattern in read_list("sources.txt"):
        is_cu = pattern.endswith(".cu")
        if is_cu and not cuda:
            continue
        found = glob.glob(os.path.join(ROOT, pattern))
        if not found:
            sys.exit(f"csrc/sources.txt: {pattern!r} matches no file")
        (cu if is_cu else cpp).update(os.path.relpath(f, ROOT) for f in found)
    return sorted(cpp) + sorted(cu)


def default_cuda_archs():
    """csrc/cuda_archs.txt as a TORCH_CUDA_ARCH_LIST value."""
    return ";".join(read_list("cuda_archs.txt"))


cuda_home = find_cuda_home()
if cuda_home and "CUDA_HOME" not in os.environ:
    os.environ["CUDA_HOME"] = cuda_home  # must be set before cpp_extension is imported

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

force = os.environ.get("FASTLOSS_CUDA")
if force not in (None, "", "0", "1"):
    sys.exit(f"FASTLOSS_CUDA must be 0 or 1, got {force!r}")
cuda_possible = torch.version.cuda is not None and cuda_home is not None
if force == "1" and not cuda_possible:
    sys.exit("FASTLOSS_CUDA=1 but CUDA cannot be built: torch.version.cuda="
             f"{torch.version.cuda}, CUDA toolkit (nvcc) found at: {cuda_home}")
with_cuda = cuda_possible if force in (None, "") else force == "1"

if with_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
    # With a visible GPU, cpp_extension builds for it; without one, build a portable list.
    if not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = default_cuda_archs()  # csrc/cuda_archs.txt, shared with CMake

sources = source_files(with_cuda)  # csrc/sources.txt, shared with CMake
# -fopenmp: at::parallel_for is a header template; without it the OpenMP pragma inside is ignored
# and every CPU kernel runs on one thread.
cxx_flags = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-Wno-psabi", "-fopenmp"]
link_flags = ["-fopenmp"]
# FASTLOSS_SANITIZE=address,undefined (tools/sanitize_cpu.sh): the CPU code instrumented by gcc's
# sanitizers, with frame pointers and line info for readable reports; -O1 keeps it usable.
sanitize = os.environ.get("FASTLOSS_SANITIZE", "")
if sanitize:
    san = [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer", "-g", "-O1"]
    if "undefined" in sanitize:
        # vptr: torch's libraries are built without it; its checks on torch's polymorphic types from
        # this library only report typeinfo mismatches across the two builds, not bugs here
        san.append("-fno-sanitize=vptr")
    cxx_flags = [f for f in cxx_flags if f != "-O3"] + san
    link_flags = link_flags + [f"-fsanitize={sanitize}"]
include_dirs = [os.path.join(ROOT, "csrc")]
define_macros = []

if with_cuda:
    # -isystem: searched after the toolkit's and torch's own -I folders, so they only fill gaps.
    wheel_includes = [f for d in wheel_cuda_include_dirs() for f in ("-isystem", d)]
    define_macros.append(("FASTLOSS_WITH_CUDA", "1"))
    ext = CUDAExtension(
        "fastloss._C",
        sources,
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_link_args=link_flags,
        extra_compile_args={"cxx": cxx_flags + wheel_includes,
                            "nvcc": ["-O3", "-lineinfo", "--expt-relaxed-constexpr"] + wheel_includes},
    )
else:
    ext = CppExtension("fastloss._C", sources, include_dirs=include_dirs,
                       define_macros=define_macros, extra_link_args=link_flags, extra_compile_args={"cxx": cxx_flags})

print(f"fastloss: building {'CPU + CUDA' if with_cuda else 'CPU only'} "
      f"(CUDA_HOME={cuda_home}, TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST')})")

setup(
    name="fastloss",
    packages=find_packages(include=["fastloss", "fastloss.*"]),
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension},
)
