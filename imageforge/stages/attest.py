"""attest: sign the provenance of a verified build, and check a build or image against it.

A verified build gets `provenance.intoto.jsonl` (records.provenance) signed with the user's
key (records.signingkeys); without a key the build goes on and says it is unsigned.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from imageforge import log
from imageforge.clouds.local import recipe
from imageforge.config import Project, oses
from imageforge.config.matrix import Cell
from imageforge.errors import ImageforgeError
from imageforge.records import provenance, signingkeys, state
from imageforge.records.provenance import ProvenanceError
from imageforge.records.record import BuildRecord
from imageforge.stages import render


def steps(cell: Cell) -> list[str]:
    """The files of the cell's build steps: its provisioners, cleanup and imageforge's own."""
    scripts = [s.script for s in (*cell.flavor.provisioners, *cell.flavor.cleanup)]
    return [*scripts, *render.BUILTIN_SCRIPTS]


def attest(project: Project, cell: Cell, record: BuildRecord) -> Path | None:
    """Sign the provenance of a verified build into its directory; None when unsigned."""
    path = record.directory / provenance.FILE
    signer = signingkeys.signer()
    if signer is None:
        path.unlink(missing_ok=True)  # never an envelope that says less than the build
        log.warn(
            f"build {record.id} is unsigned: no signing key at {signingkeys.private_path()}"
            " (`invoke keygen` makes one)"
        )
        return None
    state.require_bound(record)  # verified, for exactly the files and ids it has now
    with log.step(f"sign the provenance of build {record.id}"):
        debs = recipe.deb_cache(oses.get(record.os).suite).directory if record.os else None
        document = provenance.statement(record, project.root, steps(cell), debs)
        text = provenance.sign(document, signer)
        partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        partial.write_text(text)
        partial.chmod(0o644)  # provenance is for everyone who has the image
        os.replace(partial, path)
    key = signer.public_key.keyid
    log.info(
        f"provenance: {path.name}, signed by key {key[:16]}, {len(document['subject'])} subjects"
    )
    return path


def verify_build(record: BuildRecord, public_key: Path, envelope: Path | None = None) -> list[str]:
    """Check a build's envelope (its own, or the one given) against the key: it is of this
    build and names all it has now; then re-hash its files. The files checked."""
    path = envelope or record.directory / provenance.FILE
    if not path.is_file():
        raise ProvenanceError(f"build {record.id} has no provenance (it is unsigned)")
    document = _opened(path, public_key)
    provenance.check_record(document, record)
    return provenance.check_files(document, record.directory)


def verify_file(envelope: Path, public_key: Path) -> list[str]:
    """Check an envelope against the key and re-hash the files it names that are beside it
    (a downloaded box, say); at least one must be."""
    document = _opened(envelope, public_key)
    return provenance.check_files(document, envelope.parent, present=True)


def verify_image(envelope: Path, public_key: Path, image_id: str) -> str:
    """Check that a signed envelope names a published image; the subject that names it."""
    subject = provenance.names_image(_opened(envelope, public_key), image_id)
    if subject is None:
        raise ProvenanceError(f"the signed provenance does not name image {image_id}")
    return subject


def _opened(envelope: Path, public_key: Path) -> dict[str, Any]:
    key = signingkeys.load_public(public_key)
    try:
        text = envelope.read_bytes()
    except OSError as exc:
        raise ImageforgeError(f"{envelope}: cannot read: {exc.strerror}") from None
    return provenance.open_envelope(text, key)


def require_signed(record: BuildRecord, public_key: Path | None) -> None:
    """A publish policy's require_signed: the build's envelope verifies, with its files."""
    if public_key is None:
        public_key = signingkeys.public_path(signingkeys.private_path())
    if not public_key.is_file():
        raise ProvenanceError(
            f"build {record.id} cannot be published: require_signed needs the public key"
            f" {public_key}"
        )
    verify_build(record, public_key)
