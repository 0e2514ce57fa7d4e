"""The VNC client side of verification: what an attendee's viewer sees, checked from the host.

The screenshot comes from a real VNC client (vncdotool), the password reaches it on stdin (never
on a command line), and the text on the desktop is read by OCR (tesseract).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from imageforge.errors import ImageforgeError

SECURITY_NONE = 1
SECURITY_VNC_AUTH = 2
BACKDROP = (22, 52, 88)  # the training desktop's background colour (imageforge-desktop-setup)
PANEL = (0, 0, 1280, 20)  # where XFCE's default top panel lies on a 1280x800 screen
# The server's reason for a wrong password, as vncdotool reports it: TigerVNC 1.12 says
# "Authentication failure", 1.14+ "Authentication failed".
AUTHENTICATION_REFUSED = re.compile(r"authentication fail(ure|ed)", re.IGNORECASE)


@dataclass(frozen=True)
class Handshake:
    """What a VNC server offers before authentication, and what it said to a choice."""

    version: str
    security_types: tuple[int, ...]
    accepted: bool  # whether the server went on after the chosen type
    reason: str


def handshake(port: int, choose: int = SECURITY_NONE, *, timeout: float = 10.0) -> Handshake:
    """Speak RFB 3.8 up to the security result, choosing one type (by default None, the one a
    client without a password would ask for). A server that does not offer the chosen type may
    answer with a failed result and a reason, or (TigerVNC) just close the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        stream = sock.makefile("rwb")
        version = stream.read(12).decode(errors="replace")
        if not version.startswith("RFB "):
            raise ImageforgeError(f"127.0.0.1:{port} is not a VNC server: {version!r}")
        stream.write(b"RFB 003.008\n")
        stream.flush()
        count = stream.read(1)[0]
        if count == 0:
            return Handshake(version.strip(), (), False, _reason(stream))
        types = tuple(stream.read(count))
        stream.write(bytes([choose]))
        stream.flush()
        if choose == SECURITY_VNC_AUTH:
            return Handshake(version.strip(), types, len(stream.read(16)) == 16, "challenge")
        try:
            result = stream.read(4)
        except ConnectionResetError:
            result = b""
        if len(result) < 4:
            return Handshake(version.strip(), types, False, "connection closed")
        failed = struct.unpack(">I", result)[0] != 0
        return Handshake(version.strip(), types, not failed, _reason(stream) if failed else "")


def _reason(stream: io.BufferedRWPair) -> str:
    raw = stream.read(4)
    if len(raw) < 4:
        return "connection closed"
    length = struct.unpack(">I", raw)[0]
    return stream.read(min(length, 1024)).decode(errors="replace")


def capture(port: int, password: str, path: Path, *, timeout: float = 60.0) -> tuple[bool, str]:
    """Log in with vncdotool and save the screen as PNG: (whether it worked, its messages)."""
    argv = [sys.executable, "-m", "vncdotool.command", "-s", f"127.0.0.1::{port}"]
    argv += ["--timeout", str(int(timeout)), "capture", str(path)]
    try:
        result = subprocess.run(
            argv,
            input=password + "\n",
            capture_output=True,
            text=True,
            timeout=timeout + 10,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
    except subprocess.TimeoutExpired:
        return False, f"vncdotool did not finish in {timeout:.0f}s"
    ok = result.returncode == 0 and path.is_file()
    return ok, result.stderr.strip()[-500:]


def authentication_refused(messages: str) -> bool:
    """Whether vncdotool's messages say the server refused the password (any TigerVNC)."""
    return AUTHENTICATION_REFUSED.search(messages) is not None


def distinct_colours(path: Path) -> int:
    """How many colours the image has: a blank or single-colour frame has one."""
    from PIL import Image

    with Image.open(path) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    return len(colours) if colours is not None else 1 << 20


def share_of_colour(
    path: Path, rgb: tuple[int, int, int], box: tuple[int, int, int, int], tolerance: int = 8
) -> float:
    """The fraction of pixels in box (left, top, right, bottom) within tolerance of rgb."""
    from PIL import Image

    with Image.open(path) as image:
        data = image.convert("RGB").crop(box).tobytes()
    pixels = [data[i : i + 3] for i in range(0, len(data), 3)]
    near = sum(
        1 for p in pixels if all(abs(a - b) <= tolerance for a, b in zip(p, rgb, strict=True))
    )
    return near / max(len(pixels), 1)


def looks_like_xfce(shot: Path) -> tuple[bool, str]:
    """A desktop, not a blank, flat or background-only frame: many colours, and the top strip
    covered by the panel rather than the backdrop. Returns (verdict, what was seen)."""
    colours = distinct_colours(shot)
    backdrop_in_panel = share_of_colour(shot, BACKDROP, PANEL)
    ok = colours > 1000 and backdrop_in_panel < 0.5
    return ok, f"{colours} colours, {backdrop_in_panel:.0%} of the panel strip is backdrop"


def text_on_screen(path: Path) -> str:
    """The text tesseract reads in the image (upper-cased, whitespace collapsed)."""
    if shutil.which("tesseract") is None:
        raise ImageforgeError(
            "tesseract is not installed: it reads the desktop's text",
            hint="apt-get install tesseract-ocr",
        )
    result = subprocess.run(
        ["tesseract", str(path), "stdout", "--psm", "11"], capture_output=True, text=True
    )
    return " ".join(result.stdout.upper().split())
