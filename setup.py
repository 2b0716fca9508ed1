"""Builds mqttd's compiled hot paths (Cython 3).

``MQTTD_NO_EXTENSIONS=1`` at build time skips them and yields a pure-Python install; otherwise a
failed compile fails the build, so that a wheel never ships pure Python by accident. Where there
is no C compiler the build stops with one message that says so and names that variable, rather
than a compiler's traceback.
"""

import os
import shutil
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

MODULES = ["mqttd._codec", "mqttd._match", "mqttd._route", "mqttd.bench._loadgen"]
if sys.platform.startswith("linux"):
    MODULES.append("mqttd._stream")  # epoll: the loop's own transports elsewhere

NO_COMPILER = """
mqttd: cannot compile its C extensions ({why}).
  Install a C compiler and the Python headers (Debian/Ubuntu: apt-get install gcc python3-dev;
  macOS: xcode-select --install), or install the pure-Python version, which is slower:
      MQTTD_NO_EXTENSIONS=1 pip install mqttd
"""


class BuildExt(build_ext):
    """build_ext that says in one message what to do when there is nothing to compile with."""

    def run(self) -> None:
        cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
        if os.name == "posix" and not os.environ.get("CC") and shutil.which(cc) is None:
            raise SystemExit(NO_COMPILER.format(why=f"no C compiler: {cc!r} not found"))
        try:
            super().run()
        except Exception as exc:  # CompileError, LinkError, PlatformError: a missing toolchain
            if type(exc).__name__ in (
                "CompileError",
                "LinkError",
                "PlatformError",
                "CCompilerError",
                "DistutilsPlatformError",
                "DistutilsExecError",
            ):
                raise SystemExit(NO_COMPILER.format(why=f"{type(exc).__name__}: {exc}")) from exc
            raise


ext_modules = []
if os.environ.get("MQTTD_NO_EXTENSIONS") != "1":
    from Cython.Build import cythonize

    ext_modules = cythonize(
        [
            Extension(name, [name.replace(".", "/") + ".pyx"], extra_compile_args=["-O2"])
            for name in MODULES
            if os.path.exists(name.replace(".", "/") + ".pyx")
        ],
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
        },
    )

setup(ext_modules=ext_modules, cmdclass={"build_ext": BuildExt})
