"""Builds mqttd's compiled hot paths (Cython 3).

``MQTTD_NO_EXTENSIONS=1`` at build time skips them and yields a pure-Python install; otherwise a
failed compile fails the build, so that a wheel never ships pure Python by accident.
"""

import os

from setuptools import Extension, setup

MODULES = ["mqttd._codec", "mqttd._match", "mqttd._route", "mqttd.bench._loadgen"]

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

setup(ext_modules=ext_modules)
