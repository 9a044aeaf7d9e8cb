"""Build peftc's C extension (peftc._C) against OpenBLAS and LAPACKE.

Environment knobs:
  PEFTC_BLAS=scipy-openblas32  (the default) the OpenBLAS of the scipy-openblas32 wheel, a build requirement
                     and a runtime dependency (pyproject.toml): nothing to install beyond Python and a C compiler
  PEFTC_BLAS=system  the system OpenBLAS and LAPACKE through pkg-config (Debian: libopenblas-dev liblapacke-dev)
  PEFTC_SANITIZE=1   build with AddressSanitizer + UndefinedBehaviorSanitizer (make asan)
  PEFTC_PORTABLE=1   do not tune for the build machine's CPU (-march=native is the default)

The runtime dependencies follow the choice (pyproject.toml declares them dynamic): the scipy-openblas32 wheel,
pinned as in the build requirements, only for the build that loads its library.

Either way the build writes peftc/_distributor_init.py, which peftc imports before the extension: for the
wheel it imports scipy_openblas32, whose import loads the library (the wheel's documented preloading); for the
system build it is empty. The file is also a dependency of the extension, so switching PEFTC_BLAS rebuilds it.
"""
import glob
import os
import shlex
import subprocess
import sys
import tempfile

import numpy
from setuptools import Extension, setup

DEBIAN_HINT = (
    "PEFTC_BLAS=system needs OpenBLAS and LAPACKE with pkg-config files. On Debian/Ubuntu: "
    "apt-get install libopenblas-dev liblapacke-dev pkg-config (or build without PEFTC_BLAS for the "
    "scipy-openblas32 wheel)"
)
BLAS_CHOICES = ("scipy-openblas32", "system")
DEPENDENCIES = ["numpy>=2", "safetensors>=0.4", "tokenizers>=0.15", "tqdm>=4.60"]
# the release the extension is compiled against (pyproject.toml's build requirement; the two pins must agree)
SCIPY_OPENBLAS32 = "scipy-openblas32==0.3.34.481.3"
DISTRIBUTOR_INIT = os.path.join("peftc", "_distributor_init.py")
SYSTEM_DISTRIBUTOR_INIT = (
    '"""peftc\'s extension was built against the system OpenBLAS (PEFTC_BLAS=system), which the dynamic loader\n'
    'finds through the extension\'s own dependencies: nothing to preload. Written by setup.py."""\n'
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


def wheel_blas() -> tuple[list[str], list[str], str]:
    """Compile and link flags for the scipy-openblas32 wheel's OpenBLAS, and the preloading module's text.

    The headers declare every symbol with the wheel's prefix (scipy_cblas_sgemm); -DBLAS_SYMBOL_PREFIX,
    as the wheel's own pkg-config text sets it, lets csrc/blas.h map the plain names onto them. The
    extension records the library by its soname (libscipy_openblas.so); importing scipy_openblas32 first
    loads that very file, so the loader finds it already in the process wherever peftc is installed, and
    the rpath finds it beside an installed peftc for tools such as ldd.
    """
    try:
        import scipy_openblas32
    except ImportError:
        sys.exit("error: the default build needs the scipy-openblas32 wheel, a build requirement in "
                 "pyproject.toml (pip installs it; with --no-build-isolation install it first), or set "
                 "PEFTC_BLAS=system for the system OpenBLAS")
    cflags = [f"-I{scipy_openblas32.get_include_dir()}", "-DBLAS_SYMBOL_PREFIX=scipy_"]
    libs = [f"-L{scipy_openblas32.get_lib_dir()}", f"-l{scipy_openblas32.get_library()}",
            "-Wl,-rpath,$ORIGIN/../scipy_openblas32/lib"]
    with tempfile.TemporaryDirectory() as tmp:
        scipy_openblas32.write__distributor_init(tmp)
        with open(os.path.join(tmp, "_distributor_init.py"), encoding="utf8") as f:
            preload = f.read()
    return cflags, libs, preload


def write_if_changed(path: str, text: str) -> None:
    """Rewrite path only when its text changes, so that an unchanged choice does not force a rebuild."""
    try:
        with open(path, encoding="utf8") as f:
            if f.read() == text:
                return
    except FileNotFoundError:
        pass
    with open(path, "w", encoding="utf8") as f:
        f.write(text)


blas = os.environ.get("PEFTC_BLAS", "scipy-openblas32")
if blas not in BLAS_CHOICES:
    sys.exit(f"error: PEFTC_BLAS={blas!r}; expected one of {', '.join(BLAS_CHOICES)}")
if blas == "system":
    cflags, libs = pkg_config("openblas", "lapacke")
    preload = SYSTEM_DISTRIBUTOR_INIT
else:
    cflags, libs, preload = wheel_blas()
write_if_changed(DISTRIBUTOR_INIT, preload)

# an implicit declaration is an error: with the wheel it is a BLAS name csrc/blas.h does not map yet.
# -fno-trapping-math: no code reads the floating-point exception flags, and with them GCC keeps a loop whose
# float select has an arithmetic arm (GELU's x >= 0 ? 1 - q : q, dropout's keep ? dy * s : 0) scalar and
# branching ("control flow in loop"); it changes no value (no reassociation, no contraction).
compile_args = ["-std=c11", "-O3", "-Wall", "-Wextra", "-Werror=implicit-function-declaration", "-fno-math-errno",
                "-fno-trapping-math", *cflags]
link_args = [*libs]
if os.environ.get("PEFTC_PORTABLE") != "1":
    compile_args.append("-march=native")
if os.environ.get("PEFTC_SANITIZE") == "1":
    sanitize = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer", "-g"]
    compile_args += sanitize
    compile_args = [a for a in compile_args if a != "-O3"] + ["-O1"]
    link_args += sanitize

setup(
    install_requires=DEPENDENCIES + ([SCIPY_OPENBLAS32] if blas == "scipy-openblas32" else []),
    ext_modules=[
        Extension(
            "peftc._C",
            sources=sorted(glob.glob("csrc/*.c")) + sorted(glob.glob("csrc/python/*.c")),
            include_dirs=[numpy.get_include(), "csrc"],
            extra_compile_args=compile_args,
            extra_link_args=link_args,
            depends=sorted(glob.glob("csrc/*.h")) + sorted(glob.glob("csrc/python/*.h")) + [DISTRIBUTOR_INIT],
        )
    ],
)
