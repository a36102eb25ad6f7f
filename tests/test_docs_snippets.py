"""Every Python snippet in README.md and docs/*.md runs as written (CPU here, CUDA where there
is one). The Hugging Face ones build tiny models from configs (transformers is a test dependency)."""
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


@pytest.mark.parametrize("path, index, code", list(_snippets()))
def test_snippet_runs(path, index, code):
    exec(compile(code, f"{path.name}#{index}", "exec"), {"__name__": "__snippet__"})
