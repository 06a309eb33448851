"""Package discovery for setuptools; all other metadata is in pyproject.toml.

Every package under ``treadle/`` ships, and the top-level ``contrib/`` folder
ships as ``treadle.contrib`` (with its subpackages). pyproject.toml can either
list packages by hand or discover them, but not discover them and also map
``contrib/`` under ``treadle``; this file does both.
"""

from setuptools import find_packages, setup

PACKAGES = find_packages(include=["treadle", "treadle.*"]) + [
    "treadle." + name for name in find_packages(include=["contrib", "contrib.*"])
]

setup(packages=PACKAGES)
