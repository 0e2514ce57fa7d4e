"""A VM's serial console, copied line by line into a private log with its secrets redacted.

QEMU writes the console into a FIFO; a thread copies each complete line into the log (mode
0600), with the value of every `imageforge-secret: NAME=VALUE` line replaced. So the log never
holds a secret, not even while the VM runs or after a killed run. The values stay in memory
(`secrets`) for the process that started the VM, which is how it reads a generated password.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from pathlib import Path

# How a guest shows its owner a secret it generated (a VNC password, a token): one line.
SECRET_LINE = re.compile(r"(imageforge-secret: ([\w.-]+)=)(\S+)")
# Terminal escapes and other control characters a console shows (kept out of error messages).
CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]")
# A line longer than this is written in pieces (a secret line is far shorter).
LONGEST_LINE = 1 << 16


def redact(text: str) -> str:
    """text with the value of each secret line replaced by [redacted]."""
    return SECRET_LINE.sub(r"\1[redacted]", text)


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a console log, redacted and without terminal control characters, for
    an error message (just the heading if the log is absent or empty)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        text = ""
    last = [CONTROL.sub("", redact(line)) for line in text.splitlines()[-lines:]]
    return f"last lines of {path}:\n" + "\n".join(f"    {line}" for line in last)


def create_private(path: Path) -> int:
    """A new file only its owner can read, open for writing (its descriptor): made so before
    anything is written, replacing whatever was there and never following a planted link."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)


def private_file(path: Path) -> None:
    """An empty file that only its owner can read (create_private, closed)."""
    os.close(create_private(path))


class ConsoleCopier:
    """Copies the console QEMU writes into `<pipe>.out` (a FIFO; `-chardev pipe,path=<pipe>`)
    into a log, redacted; keeps the secrets it saw by name."""

    def __init__(self, pipe: Path, log: Path) -> None:
        self.pipe, self.log = pipe, log
        self.secrets: dict[str, str] = {}
        self._lock = threading.Lock()
        private_file(log)
        for end in self.ends:
            os.mkfifo(end, 0o600)  # .in: the console's input, which nothing writes
        self._thread = threading.Thread(target=self._copy, name=f"console {log.name}", daemon=True)
        self._thread.start()

    @property
    def ends(self) -> tuple[Path, Path]:
        return self.pipe.with_name(self.pipe.name + ".in"), self.pipe.with_name(
            self.pipe.name + ".out"
        )

    def _copy(self) -> None:
        with open(self.ends[1], "rb") as source, open(self.log, "ab") as sink:
            pending = b""
            while chunk := source.read1(4096):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                if len(pending) > LONGEST_LINE:
                    lines, pending = [*lines, pending], b""
                for line in lines:
                    sink.write(self._redacted(line) + b"\n")
                sink.flush()
            if pending:
                sink.write(self._redacted(pending))

    def _redacted(self, line: bytes) -> bytes:
        text = line.decode(errors="replace")
        for match in SECRET_LINE.finditer(text):
            with self._lock:
                self.secrets[match.group(2)] = match.group(3)
        return redact(text).encode()

    def close(self, timeout: float = 10.0) -> None:
        """Wait until every line is in the log (QEMU is gone), then remove the FIFOs."""
        deadline = time.monotonic() + timeout
        while self._thread.is_alive() and time.monotonic() < deadline:
            # if QEMU never opened its end, the copier still waits in open(): free it
            with contextlib.suppress(OSError):
                os.close(os.open(self.ends[1], os.O_WRONLY | os.O_NONBLOCK))
            self._thread.join(0.2)
        for end in self.ends:
            end.unlink(missing_ok=True)
