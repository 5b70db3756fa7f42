"""Build of the native part: csrc/ compiled with pybind11 into ``lqs_megatron._C``.

All metadata lives in pyproject.toml; this file exists only for the extension.
"""

from glob import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

ext = Pybind11Extension(
    "lqs_megatron._C",
    sorted(glob("csrc/*.cpp")),
    depends=sorted(glob("csrc/*.h")),
    cxx_std=17,
    extra_compile_args=["-O3"],
)

setup(ext_modules=[ext], cmdclass={"build_ext": build_ext})
