"""Every Python snippet in README.md and docs/*.md runs as written (CPU here, CUDA where there
is one). The Hugging Face ones build tiny models from configs (transformers is a test dependency)."""
import os
import pathlib
import re

import pytest
from conftest import OPTIONAL_LIBRARIES

ROOT = pathlib.Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _snippets():
    for path in FILES:
        for i, code in enumerate(re.findall(r"```python\n(.*?)```", path.read_text(), re.S)):
            yield pytest.param(path, i, code, id=f"{path.name}#{i}")


def _missing_optional_library(exc):
    """The integration library (OPTIONAL_LIBRARIES) whose absence raised ``exc``, else None."""
    while exc is not None:
        if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] in OPTIONAL_LIBRARIES:
            return exc.name.split(".")[0]
        exc = exc.__cause__ or exc.__context__
    return None


@pytest.mark.parametrize("path, index, code", list(_snippets()))
def test_snippet_runs(path, index, code):
    try:
        exec(compile(code, f"{path.name}#{index}", "exec"), {"__name__": "__snippet__"})
    except ImportError as exc:
        # a machine without the integration libraries (the GPU machine) skips the TRL and verl
        # examples; CI sets ICRM_REQUIRE_INTEGRATIONS=1 and fails instead
        name = _missing_optional_library(exc)
        if name is None or os.environ.get("ICRM_REQUIRE_INTEGRATIONS") == "1":
            raise
        pytest.skip(f"needs {name}, which is not installed")
