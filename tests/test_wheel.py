"""treadle as users install it: the built wheel, in a fresh virtualenv, outside the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def run(args: list[str | Path], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run a command without the checkout on its path; fail the test with its output if it fails."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TREADLE_DB")}
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{args} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def source_modules() -> set[str]:
    """Every module of the checkout, named as it is installed (contrib/ -> treadle.contrib)."""
    names = set()
    for top, package in ((ROOT / "treadle", "treadle"), (ROOT / "contrib", "treadle.contrib")):
        for path in top.rglob("*.py"):
            parts = path.relative_to(top).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            names.add(".".join((package, *parts)))
    return names


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An sdist, and a wheel built from that sdist (``python -m build``'s default)."""
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--outdir", out, ROOT], cwd=out)
    return out


@pytest.fixture(scope="module")
def wheel(dist: Path) -> Path:
    (path,) = dist.glob("treadle-*.whl")
    return path


@pytest.fixture(scope="module")
def python(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The interpreter of a fresh virtualenv where the wheel (and its dependencies) is installed."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.create(env_dir, with_pip=True)
    exe = env_dir / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    run([exe, "-m", "pip", "install", "-q", "--disable-pip-version-check", wheel], cwd=env_dir)
    return exe


def test_the_wheel_holds_every_module_py_typed_and_the_license(wheel):
    """Every module of treadle/ and contrib/ is in the wheel, with py.typed and LICENSE."""
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {
        name[:-3].replace("/", ".").removesuffix(".__init__")
        for name in names if name.startswith("treadle/") and name.endswith(".py")
    }
    assert shipped == source_modules()
    assert "treadle/py.typed" in names
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)


def test_the_sdist_holds_the_license_and_contrib(dist):
    """The sdist carries what a wheel is built from: LICENSE, setup.py, contrib/."""
    import tarfile

    (sdist,) = dist.glob("treadle-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[-1] for name in archive.getnames()}
    assert {"LICENSE", "setup.py", "pyproject.toml", "contrib/retry.py", "treadle/py.typed"} <= names


def test_python_m_treadle_help_works_from_the_installed_wheel(python, tmp_path):
    """``python -m treadle --help`` runs from outside the checkout."""
    out = run([python, "-m", "treadle", "--help"], cwd=tmp_path).stdout
    assert "usage: python -m treadle" in out


def test_the_quickstart_runs_through_the_cli_of_the_installed_wheel(python, tmp_path):
    """The quickstart pipeline runs through the installed CLI and leaves one item for review."""
    target = f"{ROOT / 'examples' / 'quickstart.py'}:pipeline"
    out = run([python, "-m", "treadle", "run", target, "--db", "sqlite:///x.db"], cwd=tmp_path).stdout
    assert "1 item(s) await review" in out
    status = run([python, "-m", "treadle", "status", target, "--db", "sqlite:///x.db", "--json"],
                 cwd=tmp_path).stdout
    assert json.loads(status)


IMPORT_ALL = """
import importlib, json, pkgutil, sys, treadle
names = ['treadle'] + [m.name for m in pkgutil.walk_packages(treadle.__path__, 'treadle.')]
missing = {}
for name in names:
    try:
        importlib.import_module(name)
    except ImportError as exc:
        missing[name] = str(exc)
print(json.dumps({'file': treadle.__file__, 'version': treadle.__version__,
                  'pytest': 'pytest' in sys.modules, 'names': names, 'missing': missing}))
"""


def test_every_module_of_the_installed_package_imports(python, tmp_path):
    """Every module imports from the installed wheel (not the checkout), without pytest.

    A module of an optional extra (treadle.contrib.dask) may instead raise
    ImportError saying which extra to install.
    """
    found = json.loads(run([python, "-c", IMPORT_ALL], cwd=tmp_path).stdout)
    assert not Path(found["file"]).is_relative_to(ROOT)
    # the submodules of an optional extra's package that needs its extra to import
    # (treadle.web without starlette) cannot be listed: walk_packages imports the package
    expected = {m for m in source_modules()
                if not any(m.startswith(p + ".") for p in found["missing"])}
    assert set(found["names"]) == expected
    assert found["pytest"] is False
    for name, error in found["missing"].items():
        assert 'pip install "treadle[' in error, f"{name} does not import: {error}"
    metadata = run([python, "-c", "import importlib.metadata as m; print(m.version('treadle'))"],
                   cwd=tmp_path).stdout.strip()
    assert found["version"] == metadata


def test_mypy_checks_the_examples_against_the_installed_package(python, tmp_path):
    """mypy sees treadle's types (py.typed is shipped) and the examples type-check.

    Third-party libraries an example uses that are not installed here (httpx)
    are ignored; treadle installed without py.typed would still be an error
    (import-untyped).
    """
    examples = shutil.copytree(ROOT / "examples", tmp_path / "examples")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--python-executable", str(python), "--no-incremental",
         "--cache-dir", os.devnull, "--disable-error-code", "import-not-found", str(examples)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "py.typed" not in proc.stdout
