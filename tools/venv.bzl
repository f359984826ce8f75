"""Repository rule `local_venv`: the repo's .venv as Bazel's Python toolchain and headers.

Bazel 4.2.3 ignores --python_path (its autodetecting toolchain runs whatever python3 is on
PATH), so tests would silently run on the system Python. This rule finds the workspace root
on each machine (never committed), and generates:
  @venv//:python3_toolchain   a registered py_runtime toolchain running <root>/.venv/bin/python3
  @venv//:python_headers      the venv interpreter's C headers (cc_library)
  @venv//:pybind11_headers    pybind11's headers from the venv (cc_library)
It re-runs when tools/requirements.lock changes. `tools/bazel` creates the venv first.
"""

def _local_venv_impl(rctx):
    root = rctx.path(Label("//:WORKSPACE")).dirname
    rctx.read(Label("//tools:requirements.lock"))  # Re-fetch when the lock changes.
    python = "%s/.venv/bin/python3" % root
    if not rctx.path(python).exists:
        fail("%s is missing: run tools/bazel (it creates the venv from tools/requirements.lock)" % python)
    res = rctx.execute([python, "-c", "\n".join([
        "import sysconfig, pybind11",
        "print(sysconfig.get_paths()['include'])",
        "print(pybind11.get_include())",
    ])])
    if res.return_code != 0:
        fail("cannot query %s for include paths:\n%s" % (python, res.stderr))
    py_include, pybind_include = res.stdout.strip().split("\n")
    rctx.symlink(py_include, "python_include")
    rctx.symlink(pybind_include, "pybind11_include")
    rctx.file("BUILD", """
load("@bazel_tools//tools/python:toolchain.bzl", "py_runtime_pair")

package(default_visibility = ["//visibility:public"])

py_runtime(
    name = "py3_runtime",
    interpreter_path = "{python}",
    python_version = "PY3",
)

py_runtime_pair(name = "runtime_pair", py3_runtime = ":py3_runtime")

toolchain(
    name = "python3_toolchain",
    toolchain = ":runtime_pair",
    toolchain_type = "@bazel_tools//tools/python:toolchain_type",
)

cc_library(
    name = "python_headers",
    hdrs = glob(["python_include/**/*.h"]),
    includes = ["python_include"],
)

cc_library(
    name = "pybind11_headers",
    hdrs = glob(["pybind11_include/**/*.h"]),
    includes = ["pybind11_include"],
    deps = [":python_headers"],
)
""".format(python = python))

local_venv = repository_rule(
    implementation = _local_venv_impl,
    local = True,
    doc = "Exposes the workspace's .venv as a Python toolchain plus Python/pybind11 headers.",
)
