"""Build entry for the native extension; metadata lives in pyproject.toml."""

from setuptools import setup

setup(
    cffi_modules=["runtimeguard/_build_native.py:ffibuilder"],
    # The extension is compiled against the 3.9 limited API (Py_LIMITED_API in
    # _build_native.py), so one cp39-abi3 wheel serves every CPython from 3.9 on.
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
