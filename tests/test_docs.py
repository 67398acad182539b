"""The documentation builds without a warning, and every Python example runs.

Each ``.. code-block:: python`` of a ``docs/*.rst`` page is executed: the
blocks of one page in order, in one namespace, in a fresh interpreter whose
working directory is a temporary folder. Line numbers in a failing example's
traceback are the line numbers of the ``.rst`` file.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

import budgeted

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = sorted(DOCS.glob("*.rst"))
_DIRECTIVE = re.compile(
    r"^(?P<indent>[ ]*)\.\.[ ]+(?:code-block|code|sourcecode)::[ ]*(?P<lang>\S*)[ ]*$"
)
_PYTHON = {"python", "python3", "py"}


@dataclass(frozen=True)
class CodeBlock:
    """One code block of an rst page: its language, first line and source."""

    language: str
    line: int
    source: str


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def code_blocks(text: str) -> list[CodeBlock]:
    """Every code-block directive of ``text``, found by indentation.

    The body of a directive is every following line indented deeper than the
    directive itself (blank lines included), after its ``:option:`` lines.
    """
    lines = text.expandtabs(8).splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = _DIRECTIVE.match(lines[i])
        i += 1
        if match is None:
            continue
        level = len(match["indent"])
        while (
            i < len(lines)
            and lines[i].strip().startswith(":")
            and (_indent(lines[i]) > level)
        ):
            i += 1  # directive options
        start = i
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > level):
            i += 1
        body = lines[start:i]
        while body and not body[0].strip():
            body, start = body[1:], start + 1
        source = textwrap.dedent("\n".join(body)).rstrip() + "\n"
        blocks.append(CodeBlock(match["lang"].lower(), start + 1, source))
    return blocks


def python_blocks(page: Path) -> list[CodeBlock]:
    """The blocks of ``page`` that the tests execute."""
    return [b for b in code_blocks(page.read_text()) if b.language in _PYTHON]


# Runs in a fresh interpreter: the blocks of one page, in order, one namespace.
_RUNNER = """
import json, sys, traceback
namespace = {"__name__": "__main__"}
for path, line, source in json.load(sys.stdin):
    code = compile("\\n" * (line - 1) + source, path, "exec")
    try:
        exec(code, namespace)
    except BaseException:
        traceback.print_exc()
        sys.exit(f"docs example failed: the block at {path}:{line}")
"""


def run_page(page: Path, cwd: Path) -> subprocess.CompletedProcess:
    """Execute the Python examples of ``page`` in a subprocess."""
    blocks = [(str(page), b.line, b.source) for b in python_blocks(page)]
    return subprocess.run(
        [sys.executable, "-c", _RUNNER],
        input=json.dumps(blocks),
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=240,
    )


PAGES_WITH_EXAMPLES = [p for p in PAGES if python_blocks(p)]


@pytest.mark.parametrize("page", PAGES_WITH_EXAMPLES, ids=lambda p: p.name)
def test_examples_of_the_page_run(page, tmp_path):
    result = run_page(page, tmp_path)
    assert result.returncode == 0, f"{page.name}:\n{result.stderr[-4000:]}"


def test_the_cli_page_shows_real_runs_of_both_commands():
    assert {args[0] for args, _ in shown_cli_runs()} == {"info", "check"}
    assert len(INFO_RUNS) >= 2


def test_the_guide_pages_have_examples_to_run():
    names = {p.name for p in PAGES_WITH_EXAMPLES}
    guide = {"quickstart.rst", "budgets.rst", "threads.rst", "sklearn.rst"}
    assert guide | {"comparison.rst"} <= names


def test_a_failing_example_names_the_page_and_its_line(tmp_path):
    page = tmp_path / "broken.rst"
    page.write_text(
        "Title\n=====\n\n.. code-block:: python\n\n   x = 1\n\n"
        "Text.\n\n.. code-block:: python\n\n   assert x == 2\n"
    )
    result = run_page(page, tmp_path)
    assert result.returncode != 0
    assert f"the block at {page}:12" in result.stderr
    assert f'File "{page}", line 12' in result.stderr  # traceback uses rst lines


SAMPLE = """\
Intro::

    not a directive

.. code-block:: python
   :caption: with options
   :linenos:

   a = 1

   if a:
       a += 1

- a list item

  .. code-block:: python

     b = a
  back in the item
.. code-block:: bash

   echo not python

Tabs:

\t.. code-block:: py

\t    c = 3
"""


def test_parser_follows_indentation_options_and_languages():
    blocks = code_blocks(SAMPLE)
    assert [(b.language, b.line) for b in blocks] == [
        ("python", 9),
        ("python", 18),
        ("bash", 22),
        ("py", 28),
    ]
    assert blocks[0].source == "a = 1\n\nif a:\n    a += 1\n"
    assert blocks[1].source == "b = a\n"
    assert blocks[3].source == "c = 3\n"


def shown_cli_runs(page: Path = DOCS / "cli.rst") -> list[tuple[list[str], list[str]]]:
    """The ``$ python -m budgeted ...`` commands shown in text blocks, with output."""
    shown = []
    for block in code_blocks(page.read_text()):
        command, *output = block.source.splitlines()
        if block.language == "text" and command.startswith("$ python -m budgeted"):
            shown.append((command.split()[4:], output))
    return shown


def _prefix(line: str) -> str:
    """The part of an output line before its first digit (machine-independent)."""
    return re.split(r"\d", line, maxsplit=1)[0]


# ``check`` itself is exercised by tests/test_cli.py; ``info`` is quick.
INFO_RUNS = [(args, shown) for args, shown in shown_cli_runs() if args[0] == "info"]


@pytest.mark.parametrize(
    "args, shown", INFO_RUNS, ids=[" ".join(a) for a, _ in INFO_RUNS]
)
def test_cli_output_shown_in_the_docs_is_what_the_cli_prints(args, shown):
    result = subprocess.run(
        [sys.executable, "-m", "budgeted", *args],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    printed = result.stdout.splitlines()
    assert _prefix(printed[0]) == _prefix(shown[0])
    assert _prefix(printed[-1]) == _prefix(shown[-1])


@pytest.fixture(scope="session")
def built_docs(tmp_path_factory):
    """Build the HTML site once per session, warnings as errors."""
    out = tmp_path_factory.mktemp("docs")
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"]
    cmd += ["-d", str(out / "doctrees"), str(DOCS), str(out / "html")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    return result, out / "html"


def test_docs_build_without_warnings(built_docs):
    result, _ = built_docs
    assert result.returncode == 0, result.stderr[-4000:]
    assert "WARNING" not in result.stderr, result.stderr[-4000:]


def test_every_page_is_built_and_the_api_page_documents_the_public_api(built_docs):
    _, html = built_docs
    for page in PAGES:
        assert (html / page.with_suffix(".html").name).is_file(), page.name
    api = (html / "api.html").read_text()
    for name in budgeted.__all__:
        assert f'id="budgeted.{name}"' in api, name
