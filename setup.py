"""Build entry for the native extension; metadata lives in pyproject.toml."""

from setuptools import setup
from setuptools.command.build_ext import build_ext


class BuildExtension(build_ext):
    def pre_run(self, ext, ffi):
        # cffi's hook, called only when the extension is really built: the BPF
        # skeletons and static libraries (runtimeguard/_build_native.py).
        ffi.prepare_sources()


setup(
    cffi_modules=["runtimeguard/_build_native.py:ffibuilder"],
    cmdclass={"build_ext": BuildExtension},
    # The extension is compiled against the 3.9 limited API (Py_LIMITED_API in
    # _build_native.py), so one cp39-abi3 wheel serves every CPython from 3.9 on.
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
