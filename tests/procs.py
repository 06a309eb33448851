"""Test helpers: run example-like scripts in subprocesses, kill them, import them."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def import_from(folder: Path, name: str) -> ModuleType:
    """Import module ``name`` from ``folder`` (as the scripts there import it)."""
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(folder))


class Script:
    """A pipeline script ``python SCRIPT DB`` whose side effects go to a log file."""

    def __init__(self, path: Path, db: str, log: Path, log_env: str) -> None:
        self.path, self.db, self.log = str(path), db, log
        self.env = {**os.environ, log_env: str(log), "PYTHONPATH": str(ROOT)}

    def lines(self) -> list[str]:
        return self.log.read_text().split() if self.log.exists() else []

    def kill_after(self, lines: int, timeout: float = 60) -> None:
        """Start it, SIGKILL it once the log has ``lines`` entries."""
        proc = subprocess.Popen([sys.executable, self.path, self.db], env=self.env)
        deadline = time.time() + timeout
        while len(self.lines()) < lines and time.time() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    def run(self, timeout: float = 120) -> None:
        """Run it to the end."""
        subprocess.run([sys.executable, self.path, self.db], env=self.env, check=True,
                       timeout=timeout)


def run_on_pty(args: list[str], env: dict[str, str], cwd: Path = ROOT,
               timeout: float = 60) -> tuple[int, str]:
    """Run ``python ARGS`` with stdout on a pseudo-terminal: (exit status, what it printed)."""
    import pty
    import select

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=slave,
                            stderr=subprocess.PIPE)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], timeout)
        if not ready:
            break
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=timeout)
    os.close(master)
    return proc.returncode, b"".join(chunks).decode()
