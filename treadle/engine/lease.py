"""This runner's identity in the store: registration, heartbeat, recovery, reconnection.

The heartbeat runs on a thread of its own (and so, on the SQL stores, on a
connection of its own): stage work, signal receivers and history reads on
the scheduler thread can never delay it past the lease. Every store call of
the scheduler goes through :meth:`Lease.call`, which retries a lost
connection with back-off (tenacity) for :attr:`Lease.RECONNECT_FOR` seconds.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import tenacity

from ..errors import StoreError
from ..store.base import StateStore
from ..store.urls import mask_url

_log = logging.getLogger("treadle.runner")

T = TypeVar("T")


def pid_alive(pid: int) -> bool:
    """True if a process with ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


class Lease:
    """Registration, heartbeat and reconnection for one runner identity (owner)."""

    RECONNECT_FOR = 60.0  # seconds of retrying a lost database connection

    def __init__(self, store: StateStore, owner: str, lease: float) -> None:
        self.store = store
        self.owner = owner
        self.lease = lease
        self.host = socket.gethostname()
        #: Set when a call was retried after a lost connection: a transaction may
        #: have committed with its reply lost, so claims may exist that we do not know.
        self.orphans_possible = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.beats = 0

    # -- every store call ------------------------------------------------------
    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call the store; while the connection is lost, retry with back-off.

        A transaction cut by a lost connection was rolled back by the server,
        or committed with its reply lost: retried results are then refused
        (already applied), and claims it made are given back afterwards.
        """
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(self.store.is_disconnect),
            stop=tenacity.stop_after_delay(self.RECONNECT_FOR),
            wait=tenacity.wait_exponential(multiplier=0.05, max=2.0),
            before_sleep=self._lost,
            reraise=True,
        )
        try:
            return retrying(fn, *args, **kwargs)
        except Exception as exc:
            if self.store.is_disconnect(exc):
                raise StoreError(
                    f"Lost the connection to the store {mask_url(self.store.url)} for "
                    f"{self.RECONNECT_FOR:g} s ({type(exc).__name__}); giving up. Nothing "
                    "committed is lost: run again once the database is reachable."
                ) from None
            raise

    def _lost(self, state: tenacity.RetryCallState) -> None:
        self.orphans_possible = True
        exc = state.outcome.exception() if state.outcome is not None else None
        _log.warning("treadle: lost the database connection (%s); reconnecting",
                     type(exc).__name__)

    # -- registration ----------------------------------------------------------
    def register(self) -> None:
        """Register this runner (retried through a lost connection)."""
        self.call(self.store.register_runner, self.owner, self.host, os.getpid(), self.lease)

    def unregister(self) -> None:
        """Remove this runner's row (retried; a failure only leaves a row that recovery removes)."""
        try:
            self.call(self.store.unregister_runner, self.owner)
        except Exception:  # noqa: BLE001 - never mask the run's own outcome
            _log.warning("treadle: could not unregister runner %s; the next recovery removes it",
                         self.owner, exc_info=True)

    # -- heartbeat ---------------------------------------------------------------
    def start(self) -> None:
        """Start heartbeating every third of the lease, on a thread of its own."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="treadle-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop heartbeating (claims then lapse after the lease unless released)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def _beat(self) -> None:
        interval = self.lease / 3
        failing = False
        try:
            while not self._stop.wait(interval):
                try:
                    self.store.heartbeat(self.owner, self.lease)
                    self.beats += 1
                    if failing:
                        _log.warning("treadle: heartbeat restored")
                    failing = False
                except Exception:  # noqa: BLE001 - keep beating; the scheduler sees real trouble
                    if not failing:
                        _log.warning("treadle: heartbeat failed; retrying", exc_info=True)
                    failing = True
        finally:
            close = getattr(self.store, "close_thread_connection", None)
            if close is not None:
                close()

    # -- recovery ----------------------------------------------------------------
    def recover(self, pipeline: Any) -> int:
        """Put claims of dead or lapsed runners back to pending; returns how many."""
        stale = self.call(self.store.recover, pipeline, self.host, pid_alive)
        if stale:
            _log.warning("treadle: recovered %d stale claim(s) of dead runners", len(stale))
        return len(stale)


__all__ = ["Lease", "pid_alive"]
