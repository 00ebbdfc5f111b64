"""Build entry for the native extension; metadata lives in pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["runtimeguard/_build_native.py:ffibuilder"])
