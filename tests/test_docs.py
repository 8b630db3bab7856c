"""Every Python example in the README and docs/ runs as pasted: each ```python block is run
in a fresh interpreter, in a temporary folder (the blocks of one page in order, so a block
may use a file an earlier one wrote). A block that needs an optional package that is not
installed (OpenVINO) is skipped, naming it. Shell examples are the commands' own tests'
job (tests/test_trainer.py, tests/test_commands.py)."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + sorted(os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs"))
                               if f.endswith(".md"))
OPTIONAL = {"openvino"}  # the deploy extra's; not in the test extra


def _blocks(page):
    text = open(os.path.join(ROOT, page), encoding="utf-8").read()
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)


CASES = [(page, i) for page in PAGES for i in range(len(_blocks(page)))]


def test_the_pages_have_examples():
    assert len(CASES) >= 4, CASES


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return {page: tmp_path_factory.mktemp(page.replace("/", "_")) for page in PAGES}


@pytest.mark.parametrize("page,index", CASES, ids=[f"{p}-{i}" for p, i in CASES])
def test_python_example_runs(page, index, folders):
    code = _blocks(page)[index]
    done = subprocess.run([sys.executable, "-c", code], cwd=folders[page], capture_output=True, text=True,
                          timeout=600)
    missing = re.search(r"ModuleNotFoundError: No module named '([\w.]+)'", done.stderr)
    if done.returncode and missing and missing.group(1).split(".")[0] in OPTIONAL:
        pytest.skip(f"needs {missing.group(1)}, not installed")
    assert done.returncode == 0, f"{page}, example {index + 1}:\n{code}\n{done.stderr[-3000:]}"
