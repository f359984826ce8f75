"""The repo's Starlark macros: Python libraries/binaries/tests on the venv, pybind11 modules.

Import roots: `//py:gemini_root` puts py/ on sys.path (so `import gemini`); the runfiles
root is always on sys.path (so `import pallas.ring_attention.ops`, `from csrc.common import
_crc32c`). Interpreter: the venv's, via the toolchain registered in WORKSPACE.
"""

_NATIVE_COPTS = ["-O3", "-Wall", "-Wno-unused-function"]

def gemini_py_library(name, srcs = [], deps = [], data = [], **kwargs):
    """py_library with the repo's import roots."""
    native.py_library(
        name = name,
        srcs = srcs,
        deps = deps + ["//py:gemini_root"],
        data = data,
        srcs_version = "PY3",
        **kwargs
    )

def gemini_py_binary(name, srcs, main = None, deps = [], data = [], args = [], **kwargs):
    """py_binary for `bazel run` targets (runs on the venv's Python)."""
    native.py_binary(
        name = name,
        srcs = srcs,
        main = main or srcs[0],
        deps = deps + ["//py:gemini_root"],
        data = data,
        args = args,
        python_version = "PY3",
        srcs_version = "PY3",
        **kwargs
    )

def pytest_test(name, srcs, deps = [], data = [], devices = 1, size = "medium", tags = [], args = [], **kwargs):
    """Runs pytest on `srcs` under `bazel test`.

    Args:
      devices: number of fake XLA CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count),
        set by tools/pytest_runner.py before anything imports jax.
      args: extra pytest arguments.
    """
    native.py_test(
        name = name,
        srcs = srcs + ["//tools:pytest_runner.py"],
        main = "//tools:pytest_runner.py",
        deps = deps + ["//py:gemini_root"],
        data = data,
        args = ["--devices=%d" % devices] + args + ["$(location %s)" % s for s in srcs],
        python_version = "PY3",
        srcs_version = "PY3",
        size = size,
        tags = tags,
        **kwargs
    )

def pybind_extension(name, srcs, hdrs = [], deps = [], copts = [], linkopts = [], **kwargs):
    """A C++17 pybind11 module importable as `<package path>.<name>` from Python targets.

    Builds `<name>.so` (shared, statically linked against its C++ deps) with -O3 and
    -march=x86-64-v3 (from .bazelrc; --config=portable drops it) and wraps it in a py_library
    `name` that Python targets depend on.
    """
    native.cc_binary(
        name = name + ".so",
        srcs = srcs + hdrs,
        deps = deps + ["@venv//:pybind11_headers"],
        copts = _NATIVE_COPTS + ["-fvisibility=hidden"] + copts,
        linkopts = linkopts,
        linkshared = True,
        linkstatic = True,
        **kwargs
    )
    native.py_library(
        name = name,
        data = [":" + name + ".so"],
        deps = ["//py:gemini_root"],
    )

NATIVE_COPTS = _NATIVE_COPTS
