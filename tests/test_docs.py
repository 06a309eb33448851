"""Every code block of README.md and docs/ does what it shows.

- A ```python block runs as a script in a scratch directory. A block that is
  deliberately a fragment (it uses names defined elsewhere) is preceded by
  ``<!-- fragment -->`` and is only compiled. A block preceded by
  ``<!-- continue -->`` runs after the page's previous runnable blocks, as one
  script. A block preceded by ``<!-- file: NAME.py -->`` is the content of
  that file (a tutorial step): it is compiled, and written to the scratch
  directory of every later block of the page. A block preceded by
  ``<!-- requires: module -->`` (an optional dependency, e.g. ``distributed``)
  runs where that module is installed and is skipped elsewhere.
- A ```sh / ```console block naming ``python -m treadle`` runs its
  ``python -m treadle`` commands, in order, in a scratch directory holding a
  copy of examples/, when it names an example (``examples/x.py:pipeline``) or
  a file of the page (``tickets.py:pipeline``); each must exit 0. A block naming no example (``app.py:pipeline``) is only
  checked by ``bash -n``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import attrs
import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^([ \t]*)```([\w-]*)[^\n]*\n(.*?)^\1```[ \t]*$", re.DOTALL | re.MULTILINE)
MARKER = re.compile(r"<!--\s*(fragment|continue|file:\s*[\w.-]+|requires:\s*[\w.]+)\s*-->\s*\Z")
EXAMPLE = re.compile(r"\bexamples/[\w./-]+\.py\b")
TARGET_FILE = re.compile(r"(?<![\w/.-])([\w-]+\.py):")

#: Blocks known to be broken in pages another change owns: (page, text the
#: block contains) -> why. Remove the entry when the page is fixed.
KNOWN_BROKEN: dict[tuple[str, str], str] = {}


@attrs.frozen
class Block:
    page: str
    line: int
    lang: str
    code: str
    marker: str | None

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def file(self) -> str | None:
        """The file name this block is the content of (``<!-- file: x.py -->``)."""
        return self._argument("file")

    @property
    def requires(self) -> str | None:
        """The module this block needs (``<!-- requires: distributed -->``)."""
        return self._argument("requires")

    def _argument(self, kind: str) -> str | None:
        if self.marker and self.marker.startswith(f"{kind}:"):
            return self.marker.split(":", 1)[1]
        return None


def blocks_of(page: str, text: str) -> list[Block]:
    """The fenced code blocks of one markdown page, in order."""
    blocks = []
    for m in FENCE.finditer(text):
        marker = MARKER.search(text[:m.start()].rstrip() + "\n")
        blocks.append(Block(page, text.count("\n", 0, m.start()) + 1, m.group(2).lower(),
                            textwrap.dedent(m.group(3)),
                            re.sub(r"\s+", "", marker.group(1)) if marker else None))
    return blocks


def python_blocks(blocks: list[Block]) -> list[Block]:
    return [b for b in blocks if b.lang in ("python", "py", "python3")]


def shell_blocks(blocks: list[Block]) -> list[Block]:
    """Shell blocks naming python -m treadle, in page order (a block may continue the previous)."""
    return [b for b in blocks if b.lang in ("sh", "bash", "shell", "console")
            and "python -m treadle" in b.code]


BLOCKS = [b for path in PAGES
          for b in blocks_of(path.relative_to(ROOT).as_posix(), path.read_text(encoding="utf-8"))]
PYTHON = python_blocks(BLOCKS)
SHELL = shell_blocks(BLOCKS)


def params(blocks: list[Block]) -> list[object]:
    out = []
    for block in blocks:
        why = next((reason for (page, text), reason in KNOWN_BROKEN.items()
                    if block.page == page and text in block.code), None)
        marks = [pytest.mark.xfail(reason=why, strict=False)] if why else []
        out.append(pytest.param(block, id=block.id, marks=marks))
    return out


def chain(block: Block, blocks: list[Block]) -> list[Block]:
    """The block, after the page's earlier runnable blocks when it continues them."""
    if block.marker != "continue":
        return [block]
    earlier = [b for b in blocks if b.page == block.page and b.line < block.line
               and b.marker != "fragment" and b.file is None and b.requires is None]
    start = max((i for i, b in enumerate(earlier) if b.marker != "continue"), default=0)
    return [*earlier[start:], block]


def write_files(page: str, before: int, folder: Path, python: list[Block]) -> set[str]:
    """Write the page's ``file:`` blocks above line ``before`` (the latest of each name)."""
    names = set()
    for b in python:
        if b.page == page and b.line < before and b.file:
            (folder / b.file).write_text(b.code, encoding="utf-8")
            names.add(b.file)
    return names


def clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TREADLE_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["HOME"] = str(tmp_path)
    return env


def test_the_docs_have_code_blocks_to_check():
    """The collector finds the blocks (a broken fence pattern would silently check nothing)."""
    assert len(PYTHON) >= 10 and any(b.page == "README.md" for b in PYTHON)
    assert any(EXAMPLE.search(b.code) for b in SHELL)


def check_python(block: Block, python: list[Block], tmp_path: Path) -> None:
    """The block compiles; unless marked a fragment (or a file), it runs to completion."""
    compile(block.code, block.id, "exec")
    if block.marker == "fragment" or block.file:
        return
    if block.requires and importlib.util.find_spec(block.requires) is None:
        pytest.skip(f"{block.id} needs {block.requires}, which is not installed")
    write_files(block.page, block.line, tmp_path, python)
    script = tmp_path / "block.py"
    script.write_text("\n".join(b.code for b in chain(block, python)), encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=clean_env(tmp_path),
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"{block.id} failed:\n{proc.stdout}\n{proc.stderr}"


@pytest.mark.parametrize("block", params(PYTHON))
def test_python_block(block: Block, tmp_path: Path):
    """The block compiles; unless marked a fragment, it runs to completion."""
    check_python(block, PYTHON, tmp_path)


def treadle_commands(code: str) -> list[list[str]]:
    """The ``python -m treadle`` commands of a shell block, in order, without comments."""
    commands = []
    for raw in code.splitlines():
        line = raw.strip()
        line = line.removeprefix("$ ")
        for part in line.split("&&"):
            part = part.strip()
            if part.startswith("python -m treadle"):
                commands.append(shlex.split(part, comments=True))
    return commands


def check_shell(block: Block, shell: list[Block], python: list[Block], tmp_path: Path) -> None:
    """Its python -m treadle commands exit 0 against the example they name (else: valid sh).

    A block that a later one continues is run as part of that later block's check.
    """
    code = "\n".join(line.removeprefix("$ ")
                     for line in block.code.splitlines()
                     if block.lang != "console" or line.startswith("$ "))
    syntax = subprocess.run(["bash", "-n"], input=code, capture_output=True, text=True,
                            check=False)
    assert syntax.returncode == 0, f"{block.id} is not valid sh: {syntax.stderr}"
    if any(block in chain(later, shell)[:-1] for later in shell):
        return  # a later block continues this one and runs its commands first
    blocks = chain(block, shell)
    examples = {name for b in blocks for name in EXAMPLE.findall(b.code)}
    page_files = {b.file for b in python if b.page == block.page and b.file}
    targets = {name for b in blocks for name in TARGET_FILE.findall(b.code)} & page_files
    if not examples and not targets:
        return
    for example in examples:
        assert (ROOT / example).is_file(), f"{block.id} names {example}, which does not exist"
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    for command, source in [(c, b) for b in blocks for c in treadle_commands(b.code)]:
        write_files(source.page, source.line, tmp_path, python)
        args = [sys.executable, *command[1:]]
        proc = subprocess.run(args, cwd=tmp_path, env=clean_env(tmp_path), input="a\n" * 20,
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, (f"{source.id}: `{shlex.join(command)}` exited {proc.returncode}\n"
                                      f"{proc.stdout}\n{proc.stderr}")


@pytest.mark.parametrize("block", params(SHELL))
def test_shell_block(block: Block, tmp_path: Path):
    """Its python -m treadle commands exit 0 against the example they name (else: valid sh)."""
    check_shell(block, SHELL, PYTHON, tmp_path)


BROKEN_PAGE = """
<!-- requires: no_such_module_here -->
```python
import no_such_module_here
```

```python
from treadle import stage

@stage(retry=0)                        # invalid: InvalidStageError
def fetch(item): ...
```

<!-- fragment -->
```python
runner.approve("t1", "review")         # a fragment still compiles...
```

<!-- fragment -->
```python
runner.approve("t1", "review"          # ...so this one fails
```

```sh
python -m treadle run examples/quickstart.py:pipeline
```

<!-- continue -->
```sh
python -m treadle approve examples/quickstart.py:pipeline memo-1 review
```
"""


def test_a_broken_block_fails_its_check(tmp_path):
    """A block that raises, a fragment that does not compile, a failing command: each fails."""
    blocks = blocks_of("broken.md", BROKEN_PAGE)
    python, shell = python_blocks(blocks), shell_blocks(blocks)
    for name in "abcd":
        (tmp_path / name).mkdir()
    with pytest.raises(pytest.skip.Exception, match="needs no_such_module_here"):
        check_python(python[0], python, tmp_path / "a")
    with pytest.raises(AssertionError, match="InvalidStageError"):
        check_python(python[1], python, tmp_path / "a")
    check_python(python[2], python, tmp_path / "b")
    with pytest.raises(SyntaxError):
        check_python(python[3], python, tmp_path / "c")
    with pytest.raises(AssertionError, match=r"broken.md:\d+: `python -m treadle approve .*` exited 2"):
        check_shell(shell[1], shell, python, tmp_path / "d")
