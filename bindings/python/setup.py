"""Build hook: the wheel bundles libmsgbus (docs/python.md, "Installing").

Where the library comes from, first found:
  1. $MSGBUS_BUILD_DIR/libmsgbus.so.0 — a build the caller made (scripts/build);
  2. <source checkout>/build/libmsgbus.so.0 — when built from the checkout;
  3. a fresh CMake build of the checkout (library only, Release) in the
     build's temporary directory — what makes `pip install ./bindings/python`
     work on a fresh machine with the build dependencies installed
     (scripts/deps);
  4. none (also with MSGBUS_NO_BUNDLE=1): the package then loads the
     installed libmsgbus from the standard places at import time (an sdist
     built away from the checkout).
It is copied into the package as msgbus/libmsgbus.so.0 and found there
first (src/msgbus/_lib.py). The source checkout is also recorded, so a
package installed from it can fall back to its build/ directory."""
import glob
import os
import shutil
import subprocess

from setuptools import Extension, setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

SONAME = "libmsgbus.so.0"


def _root():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.normpath(os.path.join(here, "..", ".."))
    return root if os.path.isfile(os.path.join(root, "include", "msgbus", "msgbus.h")) else ""


def _prebuilt(root):
    dirs = []
    if os.environ.get("MSGBUS_BUILD_DIR"):
        dirs.append(os.environ["MSGBUS_BUILD_DIR"])
    if root:
        dirs.append(os.path.join(root, "build"))
    for d in dirs:
        path = os.path.join(d, SONAME)
        if os.path.isfile(path):
            return path
    return None


def _cmake_build(root, tmp):
    if not root or not shutil.which("cmake") or os.environ.get("MSGBUS_NO_CMAKE") == "1":
        return None
    bdir = os.path.join(tmp, "libmsgbus-build")
    flags = ["-DCMAKE_BUILD_TYPE=Release", "-DMSGBUS_BUILD_TESTS=OFF",
             "-DMSGBUS_BUILD_EXAMPLES=OFF", "-DMSGBUS_BUILD_BENCH=OFF",
             "-DMSGBUS_BUILD_CLI=OFF"]
    print(f"msgbus: no libmsgbus build found: building it with CMake in {bdir}")
    subprocess.check_call(["cmake", "-S", root, "-B", bdir] + flags)
    subprocess.check_call(["cmake", "--build", bdir, "--target", "msgbus", "-j",
                           str(os.cpu_count() or 2)])
    path = os.path.join(bdir, SONAME)
    return path if os.path.isfile(path) else None


class BuildPy(build_py):
    def run(self):
        super().run()
        root = _root()
        pkg = os.path.join(self.build_lib, "msgbus")
        with open(os.path.join(pkg, "_origin.py"), "w") as f:
            f.write('"""Written at build time by setup.py."""\n')
            f.write(f"SOURCE_TREE = {root!r}\n")
        tmp = os.path.abspath(self.get_finalized_command("build").build_temp)
        # MSGBUS_NO_BUNDLE=1: a package that loads the installed or built
        # library from the standard places (scripts/test-python's, whose
        # tests check that search order).
        lib = None
        if os.environ.get("MSGBUS_NO_BUNDLE") != "1":
            lib = _prebuilt(root) or _cmake_build(root, tmp)
        for old in glob.glob(os.path.join(pkg, "libmsgbus.so*")):
            os.remove(old)
        if lib:
            shutil.copyfile(os.path.realpath(lib), os.path.join(pkg, SONAME))
            print(f"msgbus: bundling {os.path.realpath(lib)}")
        else:
            print("msgbus: no libmsgbus to bundle: the package will load the installed one")


class BinaryDistribution(Distribution):
    """The wheel carries a shared library: tag it for this platform."""

    def has_ext_modules(self):
        return True


# The binding's hot paths in C (src/msgbus/_speedups.c; CPython C API, no
# link against libmsgbus: it takes the function addresses from the library
# ctypes loaded). Optional: without a compiler or Python's headers the
# build goes on without it and the package runs on ctypes alone.
SPEEDUPS = Extension("msgbus._speedups", ["src/msgbus/_speedups.c"],
                     extra_compile_args=["-std=c11", "-O2", "-fvisibility=hidden"],
                     optional=os.environ.get("MSGBUS_REQUIRE_SPEEDUPS") != "1")

setup(cmdclass={"build_py": BuildPy}, distclass=BinaryDistribution, ext_modules=[SPEEDUPS])
