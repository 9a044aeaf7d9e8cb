"""Build peftc's C extension (peftc._C) against the system OpenBLAS and LAPACKE.

Environment knobs:
  PEFTC_SANITIZE=1   build with AddressSanitizer + UndefinedBehaviorSanitizer (make asan)
  PEFTC_PORTABLE=1   do not tune for the build machine's CPU (-march=native is the default)
"""
import glob
import os
import shlex
import subprocess
import sys

import numpy
from setuptools import Extension, setup

DEBIAN_HINT = (
    "peftc needs OpenBLAS and LAPACKE with pkg-config files. On Debian/Ubuntu: "
    "apt-get install libopenblas-dev liblapacke-dev pkg-config"
)


def pkg_config(*packages: str) -> tuple[list[str], list[str]]:
    try:
        cflags = subprocess.run(["pkg-config", "--cflags", *packages], check=True, capture_output=True, text=True)
        libs = subprocess.run(["pkg-config", "--libs", *packages], check=True, capture_output=True, text=True)
    except FileNotFoundError:
        sys.exit(f"error: pkg-config not found. {DEBIAN_HINT}")
    except subprocess.CalledProcessError as err:
        sys.exit(f"error: pkg-config could not find {' '.join(packages)}: {err.stderr.strip()}\n{DEBIAN_HINT}")
    return shlex.split(cflags.stdout), shlex.split(libs.stdout)


cflags, libs = pkg_config("openblas", "lapacke")
compile_args = ["-std=c11", "-O3", "-Wall", "-Wextra", "-fno-math-errno", *cflags]
link_args = [*libs]
if os.environ.get("PEFTC_PORTABLE") != "1":
    compile_args.append("-march=native")
if os.environ.get("PEFTC_SANITIZE") == "1":
    sanitize = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer", "-g"]
    compile_args += sanitize
    compile_args = [a for a in compile_args if a != "-O3"] + ["-O1"]
    link_args += sanitize

setup(
    ext_modules=[
        Extension(
            "peftc._C",
            sources=sorted(glob.glob("csrc/*.c")) + sorted(glob.glob("csrc/python/*.c")),
            include_dirs=[numpy.get_include(), "csrc"],
            extra_compile_args=compile_args,
            extra_link_args=link_args,
            depends=sorted(glob.glob("csrc/*.h")) + sorted(glob.glob("csrc/python/*.h")),
        )
    ],
)
