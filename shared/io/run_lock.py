"""One writer per run directory: an OS lock (``flock``) on ``<run_dir>/.mldm.lock``, held by ``mldm train``
for the whole run and by ``sample``/``evaluate`` while they write into the run.

The kernel drops a ``flock`` when its process ends, however it ends (kill -9 included), so a lock is never
left behind; the file keeps the holder's pid, host, command and start time for the refusal message, and a
file still naming a holder when the lock is free is reported as a stale lock of a killed process. The file
is emptied, never deleted, on release: deleting it would let two processes lock two different files.
``flock`` is advisory and local: two hosts writing one run over NFS are not caught. Where the OS has no
``fcntl`` (Windows) the holder is still recorded but nothing is locked.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from shared.errors import RunDirError

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None

LOCK_FILE = ".mldm.lock"


class RunLock:
    def __init__(self, directory: str | Path, command: str):
        self.path, self.command, self.fd = Path(directory) / LOCK_FILE, command, None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirError(f"{self.path.parent}: in use by {_describe(self._holder())}; one writer per run "
                              f"directory: wait for it to end (or sample with out_dir= outside the run)") from None
        self.fd = fd
        previous = self._holder()
        if previous:
            print(f"mldm {self.command}: note: {self.path.parent} was locked by {_describe(previous)}, which ended "
                  f"without releasing it (killed?); taking it over", file=sys.stderr)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(record).encode())
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)  # a clean release leaves no holder on record
            if fcntl is not None:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "another mldm process"
    return (f"mldm {holder.get('command', '?')} (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
            f"since {holder.get('since', '?')})")
