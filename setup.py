"""Builds the one compiled part of menet, the batched Jacobi eigensolver (see
src/menet/estimation/small_eigh.py); everything else is configured in pyproject.toml. The
extension is optional: without a C compiler menet installs and uses LAPACK's eigh instead."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "menet.estimation._jacobi",
            sources=["src/menet/estimation/_jacobi.c"],
            extra_compile_args=["-O3", "-fno-wrapv"],  # Python's own -fwrapv halves the kernel's speed,
            optional=True,
        )
    ]
)
