"""Build hook: records the source checkout this package is built from, so
the installed package can find libmsgbus.so in that checkout's build/
directory (the last place it looks; see src/msgbus/_lib.py)."""
import os

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPy(build_py):
    def run(self):
        super().run()
        here = os.path.dirname(os.path.abspath(__file__))
        root = os.path.normpath(os.path.join(here, "..", ".."))
        if not os.path.isfile(os.path.join(root, "include", "msgbus", "msgbus.h")):
            root = ""
        target = os.path.join(self.build_lib, "msgbus", "_origin.py")
        with open(target, "w") as f:
            f.write('"""Written at build time by setup.py."""\n')
            f.write(f"SOURCE_TREE = {root!r}\n")


setup(cmdclass={"build_py": BuildPy})
