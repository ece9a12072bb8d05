"""What keeps a training workdir safe: one trainer per workdir, stop requests that save,
disk problems named in one line, every run's config kept, restarts that move aside.

Nothing here deletes: a refused resume, a restart and a corrupt checkpoint all leave the
old files in place or move them to a named folder beside them.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
import warnings
from pathlib import Path

import jax
import numpy as np

from lumina_jax.errors import UserError

LOCK = "lock"
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}
DISK_MESSAGES = ("No space left", "Disk quota", "File too large", "Read-only file system",
                 "Permission denied")


def timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime())


class WorkdirLock:
    """`<workdir>/lock` held by the one trainer using the workdir (process 0 of a run).

    A lock left by a dead process on this host is taken over; one from another host
    cannot be checked from here, so the message says how to clear it."""

    def __init__(self, workdir: str):
        self.path = Path(workdir) / LOCK
        self.held = False

    def acquire(self) -> None:
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": timestamp()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                stale = owner and owner.get("host") == me["host"] and not process_alive(
                    owner.get("pid"))
                if stale:
                    print(f"removing the stale lock {self.path} of dead process "
                          f"{owner.get('pid')}", flush=True)
                    self.path.unlink(missing_ok=True)
                    continue
                raise UserError(
                    f"another trainer is using this workdir ({self.path}: pid "
                    f"{owner.get('pid', '?')} on host {owner.get('host', '?')}, started "
                    f"{owner.get('started', '?')} UTC); wait for it to end or use another "
                    f"--workdir. If that process is gone (e.g. its machine was lost), delete "
                    f"{self.path}") from None
            except OSError as e:
                raise disk_error(e, f"cannot create {self.path}") from None
            self.held = True
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(me, f)
            except OSError as e:
                self.release()
                raise disk_error(e, f"cannot write {self.path}") from None
            return

    def _owner(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def process_alive(pid) -> bool:
    """Whether the process that wrote `pid` (a lock, a staging folder name) on this host
    may still run (our own pid: yes)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):
        return True  # someone else's live process, or an unreadable pid: assume alive
    return True


def probe_writable(folder: str) -> None:
    """Fail now, naming the folder, rather than minutes later inside a checkpoint save."""
    path = Path(folder)
    probe = path / f".write-probe-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise disk_error(e, f"cannot write to {path}") from None


def disk_problem(e: BaseException) -> OSError | None:
    """The disk-full / read-only / permission error behind `e`, if any (Orbax and Grain
    wrap the OSError of a failed background write in their own exceptions)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
            return e
        phrase = next((m for m in DISK_MESSAGES if m in str(e)), None)
        if phrase:  # e.g. a TensorStore write error: keep the phrase and the file
            path = re.search(r'"(/[^"]+)"', str(e))
            return OSError(None, phrase, path.group(1) if path else None)
        e = e.__cause__ or e.__context__
    return None


def _follow_on(exc: BaseException | None) -> bool:
    """A disk error, or the "Event loop is closed" that Orbax's cancelled background writes
    and reads raise afterwards: the main thread reports the cause in one line."""
    return exc is not None and (disk_problem(exc) is not None
                                or "Event loop is closed" in str(exc))


class _DropFollowOn(logging.Filter):
    def filter(self, record):
        exc = record.exc_info[1] if record.exc_info else None
        return not (_follow_on(exc) or any(m in record.getMessage() for m in DISK_MESSAGES))


def quiet_follow_on_errors() -> None:
    """Keep a failed background save from printing hundreds of lines and tracebacks
    (thread exceptions, asyncio/absl log records, errors printed from C++ callbacks)."""
    thread_hook, except_hook = threading.excepthook, sys.excepthook
    unraisable_hook = sys.unraisablehook
    threading.excepthook = lambda args: None if _follow_on(args.exc_value) else thread_hook(args)
    sys.excepthook = lambda t, e, tb: None if _follow_on(e) else except_hook(t, e, tb)
    sys.unraisablehook = (lambda u: None if _follow_on(u.exc_value) else unraisable_hook(u))
    for name in ("asyncio", "absl"):
        logging.getLogger(name).addFilter(_DropFollowOn())
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited")


def disk_error(e: OSError, what: str) -> UserError:
    where = f" ({e.filename})" if getattr(e, "filename", None) else ""
    return UserError(f"{what}{where}: {e.strerror or e}; free space or fix the permissions, "
                     f"then run the same command again (it resumes from the last checkpoint)")


def record_config(workdir: str, text: str, step: int) -> None:
    """Write `config.json`; a different earlier one moves to `config_history/` first."""
    path = Path(workdir) / "config.json"
    if path.exists() and path.read_text() != text:
        history = path.parent / "config_history"
        history.mkdir(exist_ok=True)
        os.replace(path, history / f"config.{timestamp()}.before-step{step}.json")
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


RUN_FILES = ("checkpoints", "metrics.jsonl", "samples", "tensorboard")


def move_run_aside(workdir: str, why: str, names=RUN_FILES) -> Path | None:
    """Move the run's `names` into `<workdir>/before-<why>-<time>/` (nothing is deleted),
    e.g. for `train --restart` or `import --move-existing`. Returns that folder."""
    present = [n for n in names if (Path(workdir) / n).exists()]
    if not present:
        return None
    target = Path(workdir) / f"before-{why}-{timestamp()}"
    target.mkdir()
    for name in present:
        os.replace(Path(workdir) / name, target / name)
    return target


class Interrupted(Exception):
    """A stop request arrived while the loop was waiting for data."""


class StopRequests:
    """SIGTERM (a preemption notice) or Ctrl-C (SIGINT) ask the loop to save and exit at
    the end of the current step; a second Ctrl-C aborts at once. In a single process, a
    request that arrives while the loop waits for data interrupts the wait (`Interrupted`).
    With several processes every step agrees on the stop (`agreed`), so all of them save
    the same step even when only one got the signal."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.name: str | None = None
        self.waiting_for_data = False
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.name == "SIGINT" and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: abort now
        self.name = self.name or name
        hint = "; press Ctrl-C again to abort without saving" if name == "SIGINT" else ""
        # os.write: print() is not safe inside a signal handler
        os.write(sys.stderr.fileno(),
                 f"\n{name}: saving a checkpoint at the end of this step, then exiting{hint}\n"
                 .encode())
        if self.waiting_for_data and jax.process_count() == 1:
            raise Interrupted

    def agreed(self) -> bool:
        """Whether any process was asked to stop (a collective with several processes)."""
        if jax.process_count() == 1:
            return self.name is not None
        from jax.experimental import multihost_utils

        mine = np.int32(self.name is not None)
        return bool(np.any(multihost_utils.process_allgather(mine)))

    def close(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
