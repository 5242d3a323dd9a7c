"""Builds the one compiled part of menet, the batched Jacobi eigensolver (see
src/menet/estimation/small_eigh.py); everything else is configured in pyproject.toml. The
extension is optional: without a C compiler menet installs and uses LAPACK's eigh instead.
The module records a hash of the source it was built from, so that a stale build (an edited
source that failed to compile, leaving the old module in place) is caught by the tests."""

import hashlib
from pathlib import Path

from setuptools import Extension, setup

SOURCE = "src/menet/estimation/_jacobi.c"
SOURCE_HASH = hashlib.sha256((Path(__file__).resolve().parent / SOURCE).read_bytes()).hexdigest()[:16]

setup(
    ext_modules=[
        Extension(
            "menet.estimation._jacobi",
            sources=[SOURCE],
            # Python's own -fwrapv halves the kernel's speed; without errno, sqrt vectorises (1.3-2x).
            extra_compile_args=["-O3", "-fno-wrapv", "-fno-math-errno"],
            define_macros=[("MENET_JACOBI_SOURCE_HASH", f'"{SOURCE_HASH}"')],
            optional=True,
        )
    ]
)
