#!/usr/bin/python3
"""What every first-boot program of an image shares: reading imageforge's settings from the
instance's user-data, checking them, and saying what happened.

Run by Packer as a provisioner (as root, no argument), it installs itself as
/usr/local/lib/imageforge/imageforge_firstboot.py, where the flavors' first-boot programs import
it, and writes the user-data schema imageforge generated from its own models
(IMAGEFORGE_USER_DATA_SCHEMA: the rules images.yml applies to the same settings) to
/etc/imageforge/user-data.schema.json.

At boot, `settings(block)`:

- reads the user-data through cloud-init (`cloud-init query userdata`, which undoes gzip);
- takes every cloud-config document in it: a plain `#cloud-config`, or each `text/cloud-config`
  part of a MIME multipart, gzipped or not; a later document's block replaces an earlier one's;
- checks each `imageforge_*` block against the schema, and raises BadUserData with one line
  (the key path and what is allowed, never the value, which may be a secret) if one is wrong.

A program that gets BadUserData calls `refuse()`: the line goes to the console and to motd, and
the unit fails having changed nothing.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

LIBRARY = Path("/usr/local/lib/imageforge/imageforge_firstboot.py")
SCHEMA = Path("/etc/imageforge/user-data.schema.json")
MOTD_DIR = Path("/run/motd.d")
PREFIX = "imageforge_"
GZIP_MAGIC = b"\x1f\x8b"
CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
PLAIN_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$")
FORMATS = {"ipv4": "an IPv4 address", "ipv6": "an IPv6 address"}
# What a schema rule asks for, said without the value that broke it.
RULES = {
    "pattern": lambda v: f"must match {v}",
    "type": lambda v: f"must be of type {' or '.join(v) if isinstance(v, list) else v}",
    "enum": lambda v: "must be one of " + ", ".join(map(str, v)),
    "const": lambda v: f"must be {v}",
    "minLength": lambda v: f"must have at least {v} characters",
    "maxLength": lambda v: f"must have at most {v} characters",
    "minimum": lambda v: f"must be at least {v}",
    "maximum": lambda v: f"must be at most {v}",
    "format": lambda v: f"must be {FORMATS.get(v, v)}",
    "propertyNames": lambda v: f"has a key that does not match {v.get('pattern', v)}",
    "minProperties": lambda v: f"must have at least {v} entries",
    "maxProperties": lambda v: f"must have at most {v} entries",
}


class BadUserData(Exception):
    """A setting in the user-data that the schema refuses: one line, without the value."""


def plain(text: str) -> str:
    """text on one line: control characters (newlines, escapes) replaced."""
    return CONTROL.sub("?", text)


def say(program: str, message: str, *, motd: bool = False) -> None:
    """One line on the console (the unit's output goes there) and, if asked, in motd."""
    line = f"{program}: {plain(message)}"
    print(line, flush=True)
    if motd:
        MOTD_DIR.mkdir(parents=True, exist_ok=True)
        (MOTD_DIR / f"50-{program}").write_text(line + "\n")


def refuse(program: str, problem: BadUserData) -> NoReturn:
    """Say why the user-data is refused (console and motd) and fail the unit."""
    say(program, f"refusing the user-data, nothing changed: {problem}", motd=True)
    sys.exit(1)


def to_console(line: str) -> None:
    """Straight to the console (the serial log a cloud shows the instance's owner), not to the
    journal: how a generated secret reaches its owner, once."""
    with contextlib.suppress(OSError), open("/dev/console", "w") as console:
        console.write(line + "\n")


def write_private(path: Path, data: bytes, uid: int = 0, gid: int = 0, mode: int = 0o600) -> None:
    """Replace path with a file holding data, owned by uid:gid with mode: never readable by
    others, not even while it is written, and never written through a planted link."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.imageforge")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    with os.fdopen(os.open(temporary, flags, 0o600), "wb") as out:
        out.write(data)
        os.fchown(out.fileno(), uid, gid)
        os.fchmod(out.fileno(), mode)
    os.replace(temporary, path)


# ---------------------------------------------------------------------------------------------
# The user-data


def raw_user_data() -> bytes:
    """The instance's user-data as cloud-init has it (gzip undone); b"" if there is none."""
    result = subprocess.run(["cloud-init", "query", "userdata"], capture_output=True, check=False)
    if result.returncode != 0:
        reason = result.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
        raise BadUserData(f"cloud-init cannot give the user-data: {reason[0]}")
    data = result.stdout
    return b"" if data.strip() in (b"", b"None") else data


def documents(data: bytes, *, cloud_config: bool = False) -> Iterator[Any]:
    """Each cloud-config document in data, parsed: data is gzip, MIME multipart, or text that
    starts with #cloud-config (or any YAML, if its MIME part said text/cloud-config)."""
    import yaml

    if data.startswith(GZIP_MAGIC):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise BadUserData(f"a gzipped user-data part does not decompress: {exc}") from None
        yield from documents(data, cloud_config=cloud_config)
        return
    head = data.lstrip()[:4096].lower()
    if head.startswith(b"content-type:") or b"mime-version:" in head:
        message = email.message_from_bytes(data, policy=email.policy.compat32)
        for part in message.walk():
            if part.is_multipart():
                continue
            payload = part.get_payload(decode=True) or b""
            said = part.get_content_type() == "text/cloud-config"
            yield from documents(payload, cloud_config=said)
        return
    if not (cloud_config or data.lstrip().startswith(b"#cloud-config")):
        return  # a script, a boothook, an include: nothing of ours
    try:
        yield yaml.safe_load(data)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise BadUserData(f"a cloud-config document is not YAML{where}") from None


def blocks(data: bytes) -> dict[str, Any]:
    """The imageforge_* blocks of every cloud-config document in data, a later one replacing an
    earlier one of the same name."""
    found: dict[str, Any] = {}
    for document in documents(data):
        if isinstance(document, dict):
            found.update({k: v for k, v in document.items() if str(k).startswith(PREFIX)})
    return found


def check(found: dict[str, Any], schema: dict[str, Any]) -> None:
    """Raise BadUserData naming the first setting the schema refuses."""
    import jsonschema
    from jsonschema.exceptions import best_match

    plain_values(found)
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    error = best_match(validator.iter_errors(found))
    if error is not None:
        raise BadUserData(explain(error))


def plain_values(node: Any, where: str = "") -> None:
    """Refuse what a schema pattern cannot: Python's `$` also matches before a final line
    break, so no key or text may hold a control character; and no setting takes a fraction
    (JSON Schema counts 7.0 as an integer)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(key, str) and CONTROL.search(key):
                raise BadUserData(f"{where or 'the user-data'}: a key holds a control character")
            plain_values(value, f"{where}.{shown_key(key)}" if where else shown_key(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            plain_values(value, f"{where}.{index}")
    elif isinstance(node, str) and CONTROL.search(node):
        raise BadUserData(f"{where}: control characters (a line break, a tab) are not allowed")
    elif isinstance(node, float):
        raise BadUserData(f"{where}: a number with a fraction is not allowed")


def shown_key(key: Any) -> str:
    """A key as a message may name it: a plain name, else a description (a mistyped line such
    as `vnc_password:hunter22` makes the secret a key)."""
    text = str(key)
    return text if PLAIN_KEY.match(text) else "(a key that is not a plain name)"


def explain(error: Any) -> str:
    """`key.path: what is allowed` for a jsonschema error, never quoting the value."""
    from jsonschema.exceptions import best_match

    where = ".".join(shown_key(part) for part in error.absolute_path) or "the user-data"
    rule, wanted = str(error.validator), error.validator_value
    if rule in ("anyOf", "oneOf") and error.context:
        # `X | None`: the null branch says nothing; two address formats: either will do.
        branches = [e for e in error.context if e.validator_value != "null"]
        if branches and all(e.validator == "format" for e in branches):
            return f"{where}: must be " + " or ".join(FORMATS[e.validator_value] for e in branches)
        if branches:
            return explain(best_match(branches))
    if rule == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        given = error.instance if isinstance(error.instance, dict) else {}
        unknown = ", ".join(
            repr(shown_key(key)) for key in sorted(set(given) - set(allowed), key=str)
        )
        return f"{where}: unknown key {unknown}; allowed: {', '.join(allowed)}"
    if rule in ("required", "dependentRequired"):
        return f"{where}: {plain(error.message)}"
    if rule == "not" and isinstance(wanted, dict) and "enum" in wanted:
        return f"{where}: must not be one of {', '.join(map(str, wanted['enum']))}"
    said = RULES.get(rule)
    return f"{where}: {said(wanted) if said else f'breaks the rule {rule}'}"


def settings(block: str, data: bytes | None = None) -> dict[str, Any]:
    """The user-data's block `imageforge_<block>`, checked ({} if absent or null); data: the
    user-data itself, else cloud-init's."""
    found = blocks(raw_user_data() if data is None else data)
    check(found, json.loads(SCHEMA.read_text()))
    value = found.get(f"{PREFIX}{block}")
    return value if isinstance(value, dict) else {}


# ---------------------------------------------------------------------------------------------
# At build time, as a provisioner.


def unit(description: str, program: Path) -> str:
    """The systemd unit that runs `program boot` once per boot, after cloud-init's network
    stage (which writes the user-data, the host name and /etc/hosts): cloud-init.service up to
    cloud-init 24.2 (Debian 12), cloud-init-network.service since 24.3 (Debian 13). Ordering
    after a unit that does not exist is harmless."""
    return f"""\
[Unit]
Description={description}
After=cloud-init.service cloud-init-network.service network-online.target
Wants=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={program} boot
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
"""


def install() -> int:
    schema = json.loads(os.environ["IMAGEFORGE_USER_DATA_SCHEMA"])
    LIBRARY.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(__file__, LIBRARY)
    LIBRARY.chmod(0o644)
    SCHEMA.parent.mkdir(parents=True, exist_ok=True)
    SCHEMA.write_text(json.dumps(schema, indent=1) + "\n")
    SCHEMA.chmod(0o644)
    print(f"first-boot library in {LIBRARY}, user-data schema in {SCHEMA}")
    return 0


if __name__ == "__main__":
    sys.exit(install())
