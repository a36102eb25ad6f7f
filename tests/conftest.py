"""Test configuration shared by every family.

Without a CUDA device the Triton kernels run on CPU tensors through Triton's interpreter:
TRITON_INTERPRET must be set before triton is first imported, hence at the top of this file.
`import torch` does not import triton, so asking torch about CUDA first is safe.
"""
import contextlib
import os

import torch

ON_CUDA = torch.cuda.is_available()
if not ON_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import pytest  # noqa: E402

import icrm_kernels  # noqa: E402
from icrm_kernels import _backend  # noqa: E402

DEVICE = torch.device("cuda" if ON_CUDA else "cpu")


# The libraries the integration tests run for real. They skip where a library is missing (a GPU
# machine without trl, say); `make test` sets ICRM_REQUIRE_INTEGRATIONS=1 so that in CI a
# missing one fails the run instead of skipping its tests.
OPTIONAL_LIBRARIES = ("transformers", "peft", "trl", "datasets", "tokenizers", "verl")


def pytest_sessionstart(session):
    if os.environ.get("ICRM_REQUIRE_INTEGRATIONS") == "1":
        import importlib

        missing = []
        for name in OPTIONAL_LIBRARIES:
            try:
                importlib.import_module("verl.trainer.ppo.core_algos" if name == "verl" else name)
            except Exception as exc:  # noqa: BLE001 - report every missing library at once
                missing.append(f"{name} ({type(exc).__name__}: {exc})")
        if missing:
            raise pytest.UsageError("ICRM_REQUIRE_INTEGRATIONS=1 but these integration libraries do not import: "
                                    + "; ".join(missing))


def pytest_report_header(config):
    return (
        f"icrm_kernels: device={DEVICE}, C++ extension={'built' if _backend.HAS_CPP else 'NOT built'}, "
        f"triton={'yes' if _backend.HAS_TRITON else 'no'}, interpreter={_backend.triton_interpreting()}, "
        f"torch={torch.__version__}"
    )


@pytest.fixture
def device():
    """The device the fast path runs on: CUDA when present, else the CPU."""
    return DEVICE


def backends():
    """Backends to parametrize over on this machine (reference, cpp, triton)."""
    return _backend.available_backends(DEVICE)


@pytest.fixture(params=backends())
def backend(request):
    """Runs the test once per available backend, inside use_backend(name)."""
    with icrm_kernels.use_backend(request.param):
        yield request.param


def pytest_collection_modifyitems(config, items):
    if ON_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@contextlib.contextmanager
def counting_compile(recompile_limit: int = 2):
    """``torch.compile`` with a backend that records each graph Dynamo hands it, under a tight
    recompile limit (a recompile per call would hit it): yields ``(compile, graphs)``."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    old = torch._dynamo.config.recompile_limit
    torch._dynamo.config.recompile_limit = recompile_limit
    torch._dynamo.reset()
    # as in a fresh process: nothing remembered by earlier eager calls (a compiled function must
    # not recompile when the first eager call after it fills a cache)
    _backend._CPP_OPS_SEEN.clear()
    try:
        yield (lambda fn: torch.compile(fn, backend=backend, fullgraph=True)), graphs
    finally:
        torch._dynamo.config.recompile_limit = old
        torch._dynamo.reset()
