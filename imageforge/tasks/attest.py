"""Tasks of the chain of trust: make a signing key, sign and verify provenance."""

from __future__ import annotations

from pathlib import Path

from invoke.context import Context
from invoke.tasks import task

from imageforge import log
from imageforge.config import matrix
from imageforge.errors import ConfigError
from imageforge.records import provenance, registry, signingkeys
from imageforge.records.record import RECORD, load
from imageforge.stages import attest as attesting
from imageforge.tasks.common import friendly, out, project

ACTIONS = ("verify", "sign")
HELP = {
    "action": "verify (check a build or an envelope) or sign (sign a verified build again)",
    "target": "a build id, or (verify) a provenance.intoto.jsonl file",
    "key": "the public key to verify with (default: your own, beside your signing key)",
    "image_id": "verify: the published image id the envelope must name (no local build needed)",
    "config": "path to images.yml (default: ./images.yml)",
}


@task
@friendly
def keygen(c: Context) -> None:
    """Make the ed25519 key pair that signs provenance (IMAGEFORGE_SIGNING_KEY, else
    $XDG_CONFIG_HOME/imageforge/signing-key); an existing key is never replaced."""
    private, public = signingkeys.generate(signingkeys.private_path())
    key = signingkeys.load_public(public)
    log.info(f"signing key: {private} (0600; keep it secret)")
    log.info(f"public key:  {public} (give it to whoever verifies your images)")
    out.print(f"key id {key.keyid}")


@task(help=HELP, positional=["action", "target"])
@friendly
def attest(
    c: Context,
    action: str,
    target: str,
    key: str | None = None,
    image_id: str | None = None,
    config: str | None = None,
) -> None:
    """verify BUILD|FILE [--key PUB] [--image-id ID]; sign BUILD. Exit 1: it does not verify."""
    if action not in ACTIONS:
        raise ConfigError(f"attest: {action!r} is not one of {', '.join(ACTIONS)}")
    if not target:
        raise ConfigError(f"attest {action}: name a build id or a provenance file")
    public = Path(key) if key else signingkeys.public_path(signingkeys.private_path())
    envelope = Path(target)
    if action == "verify" and image_id is not None:
        subject = attesting.verify_image(envelope, public, image_id)
        out.print(f"verified: {envelope} is signed by {public} and names {subject}")
        return
    in_build = envelope.is_file() and (envelope.parent / RECORD).is_file()
    if action == "verify" and envelope.is_file() and not in_build:
        checked = attesting.verify_file(envelope, public)
        out.print(f"verified: {envelope} is signed by {public}; re-hashed {', '.join(checked)}")
        return
    if action == "sign":
        proj = project(config)
        record = registry.find(proj.root, target)
        attesting.attest(proj, matrix.find(proj, record.flavor, record.cloud), record)
        return
    # An envelope in a build directory is that build's, whichever project holds it.
    record = load(envelope.parent) if in_build else registry.find(project(config).root, target)
    checked = attesting.verify_build(record, public, envelope if in_build else None)
    out.print(
        f"verified: build {record.id} ({provenance.FILE}) is signed by {public};"
        f" re-hashed {len(checked)} files: {', '.join(checked)}"
    )


TASKS = [keygen, attest]
