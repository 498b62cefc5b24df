"""Builds prunekit and its extension prunekit._C.

The C++ kernels are always built. The CUDA kernels are built when PRUNEKIT_CUDA says so:
``auto`` (default) builds them when torch has CUDA and nvcc is found, ``1`` insists (and fails
clearly without them), ``0`` skips them. ``DEBUG=1`` compiles without optimisation and with
symbols; ``NVCC_FLAGS`` adds flags to nvcc; ``TORCH_CUDA_ARCH_LIST`` picks GPU architectures
(default here: Ampere and Hopper, plus PTX for newer GPUs).
"""
import glob
import os
import re
import shutil
import sys

from setuptools import find_packages, setup

CUDA_CHOICES = ("auto", "0", "1")


def find_cuda_home():
    """A CUDA toolkit with bin/nvcc and include/cuda_runtime.h, or None.

    torch guesses CUDA_HOME from the nvcc on PATH, which goes wrong when that nvcc is a wrapper
    script outside the toolkit; checking for the headers avoids building against no toolkit.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for home in filter(None, candidates):
        if (os.path.isfile(os.path.join(home, "bin", "nvcc"))
                and os.path.isfile(os.path.join(home, "include", "cuda_runtime.h"))):
            return home
    return None


def decide_cuda_build():
    choice = os.environ.get("PRUNEKIT_CUDA", "auto").strip().lower()
    if choice not in CUDA_CHOICES:
        raise SystemExit(f"PRUNEKIT_CUDA must be one of {', '.join(CUDA_CHOICES)}, got {choice!r}")
    import torch

    cuda_home = find_cuda_home()
    reasons = []
    if torch.version.cuda is None:
        reasons.append("torch has no CUDA")
    if cuda_home is None:
        reasons.append("no CUDA toolkit (nvcc and headers) found")
    if choice == "1" and reasons:
        raise SystemExit(f"PRUNEKIT_CUDA=1 but {' and '.join(reasons)}")
    build = choice == "1" or (choice == "auto" and not reasons)
    if build:
        os.environ["CUDA_HOME"] = cuda_home  # read by torch.utils.cpp_extension on import
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
        print(f"prunekit: building CPU and CUDA kernels (CUDA_HOME={cuda_home}, "
              f"TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']})")
    else:
        why = "PRUNEKIT_CUDA=0" if choice == "0" else " and ".join(reasons)
        print(f"prunekit: building CPU kernels only ({why})")
    return build


def extension():
    with_cuda = decide_cuda_build()
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    debug = os.environ.get("DEBUG", "0") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
    # at::parallel_for expands to OpenMP pragmas in our own code: without -fopenmp it runs on one
    # thread. The process shares torch's libgomp (same soname, already loaded).
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    args = {"cxx": opt + openmp}
    macros = []
    if with_cuda:
        sources += sorted(glob.glob("csrc/**/*.cu", recursive=True))
        args["nvcc"] = opt + os.environ.get("NVCC_FLAGS", "").split()
        macros.append(("PRUNEKIT_WITH_CUDA", None))
    kind = CUDAExtension if with_cuda else CppExtension
    return kind("prunekit._C", sources, extra_compile_args=args, extra_link_args=openmp,
                define_macros=macros)


def version():
    with open(os.path.join("prunekit", "_version.py")) as f:
        return re.search(r'__version__ = "([^"]+)"', f.read()).group(1)


BUILTIN_PLUGINS = [
    "snip = prunekit_plugins.snip",
    "gradflow = prunekit_plugins.gradflow",
    "rigl = prunekit_plugins.rigl",
    "magnitude = prunekit_plugins.magnitude",
    "random = prunekit_plugins.random",
    "structured = prunekit_plugins.structured",
    "topk = prunekit_plugins.topk",
    "erk = prunekit_plugins.erk",
    "soft_threshold = prunekit_plugins.soft_threshold",
    "arbiters = prunekit_plugins.arbiters",
    "overlap = prunekit_plugins.overlap",
]

if __name__ == "__main__":
    ext_modules = [extension()]  # before importing cpp_extension, which reads CUDA_HOME once
    from torch.utils.cpp_extension import BuildExtension

    setup(
        name="prunekit",
        version=version(),
        description="Pruning toolkit for multi-task neural networks",
        python_requires=">=3.10",
        packages=find_packages(include=["prunekit", "prunekit.*", "prunekit_plugins",
                                        "prunekit_plugins.*"]),
        ext_modules=ext_modules,
        cmdclass={"build_ext": BuildExtension},
        entry_points={
            "console_scripts": ["prunekit = prunekit.cli:main"],
            "prunekit": BUILTIN_PLUGINS,
        },
    )
