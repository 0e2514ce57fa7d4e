"""SLSA v1 provenance of a verified build: an in-toto Statement in a signed DSSE envelope.

The statement is made from the build record alone (and the files it names), so it says what
the record binds: every artifact and its sha256 (the disk, the box, the SBOM) and every cloud
image id per region are the subjects; images.yml's settings of the cell, the git commit, the
template hash and each provisioner file's sha256 are the build definition; every package of
the SBOM (with the sha256 of the .deb the build installed, where the shared .deb cache holds
it) and every wheel are its resolved dependencies; imageforge, Packer and QEMU's versions and
the accelerator are the builder. It is checked against the in-toto and SLSA protobuf schemas
before it is signed. DSSE and the signatures are securesystemslib's.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
from in_toto_attestation.v1.statement import Statement
from packageurl import PackageURL
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import Key, Signer

from imageforge import __version__
from imageforge.errors import ImageforgeError
from imageforge.records.record import BuildRecord
from imageforge.records.state import sha256 as _sha256
from imageforge.stages.sbom import package_urls

FILE = "provenance.intoto.jsonl"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "urn:imageforge:packer-image:v1"
BUILDER_ID = "urn:imageforge:builder"
# The tag, label or property a published image carries: the envelope's sha256.
TAG = "imageforge-provenance"
IMAGE = "cloudImage"  # the annotation of a subject that is a cloud image, not a file


class ProvenanceError(ImageforgeError):
    """Provenance that does not verify; the message is the one-line reason."""


def image_subject(cloud: str, place: str, image_id: str) -> dict[str, Any]:
    """A cloud image as a subject. An image has no digest an outsider can compute, so the
    digest is that of its name, which verification matches."""
    name = f"{cloud}:{place}:{image_id}"
    digest = {"sha256": hashlib.sha256(name.encode()).hexdigest()}
    return {"name": name, "digest": digest, "annotations": {IMAGE: True}}


def subjects(record: BuildRecord) -> list[dict[str, Any]]:
    """Every file of the build with its sha256, then every image id by place."""
    files = {a.path: a.sha256 for a in (*record.artifacts, *record.derived)}
    sbom = record.verification.get("sbom")
    if isinstance(sbom, str) and (record.directory / sbom).is_file():
        files[sbom] = _sha256(record.directory / sbom)
    found = [{"name": p, "digest": {"sha256": d}} for p, d in sorted(files.items())]
    images = {**record.artifact_ids, **record.copies}
    found += [image_subject(record.cloud, p, i) for p, i in sorted(images.items())]
    for place, image_id in sorted(record.imported.items()):
        cloud, _, where = place.partition(":")
        found.append(image_subject(cloud, where or cloud, image_id))
    return found


def dependencies(
    record: BuildRecord, project_root: Path, steps: list[str], deb_dir: Path | None
) -> list[dict[str, Any]]:
    """The git commit, each provisioner file, the layer, every package of the SBOM."""
    commit = record.git_commit.removesuffix("-dirty")
    source: dict[str, Any] = {"name": "source", "digest": {"gitCommit": commit}}
    if record.git_commit.endswith("-dirty"):
        source["annotations"] = {"dirty": True}
    found = [source] if commit and commit != "unknown" else []
    for step in sorted(set(steps)):
        found.append({"name": step, "digest": {"sha256": _sha256(project_root / step)}})
    if record.base_image.get("sha256"):
        found.append({"name": "layer", "digest": {"sha256": record.base_image["sha256"]}})
    for purl in _sbom_purls(record):
        found.append(_package(purl, deb_dir))
    return found


def _package(purl: PackageURL, deb_dir: Path | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"uri": purl.to_string()}
    if purl.type == "deb" and deb_dir is not None and purl.version:
        arch = (purl.qualifiers or {}).get("arch", "")
        deb = deb_dir / f"{purl.name}_{purl.version.replace(':', '%3a')}_{arch}.deb"
        if deb.is_file():
            entry["digest"] = {"sha256": _sha256(deb)}
    return entry


def _sbom_purls(record: BuildRecord) -> list[PackageURL]:
    """The package URLs of the build's SBOM; one that cannot be read is a ProvenanceError."""
    sbom = record.verification.get("sbom")
    path = record.directory / str(sbom) if isinstance(sbom, str) else None
    if path is None or not path.is_file():
        return []
    try:
        return package_urls(path)
    except (OSError, ValueError) as exc:
        raise ProvenanceError(f"{path}: not an SBOM provenance can list: {exc}") from None


def statement(
    record: BuildRecord, project_root: Path, steps: list[str], deb_dir: Path | None
) -> dict[str, Any]:
    """The in-toto Statement (SLSA Provenance v1) of a verified build, schema-checked."""
    predicate = {
        "buildDefinition": {
            "buildType": BUILD_TYPE,
            "externalParameters": {
                "flavor": record.flavor,
                "cloud": record.cloud,
                "os": record.os,
                "settings": record.settings,
            },
            "internalParameters": {
                "templateHash": record.template_hash,
                "contentHash": record.content_hash,
                "accelerator": record.accelerator,
            },
            "resolvedDependencies": dependencies(record, project_root, steps, deb_dir),
        },
        "runDetails": {
            "builder": {
                "id": BUILDER_ID,
                "version": {
                    "imageforge": __version__,
                    "packer": record.packer_version,
                    "qemu": record.qemu_version,
                },
            },
            "metadata": {
                "invocationId": record.id,
                "startedOn": record.started_at,
                **({"finishedOn": record.finished_at} if record.finished_at else {}),
            },
        },
    }
    document = {
        "_type": STATEMENT_TYPE,
        "subject": subjects(record),
        "predicateType": PREDICATE_TYPE,
        "predicate": predicate,
    }
    check_schema(document)
    return document


def check_schema(document: dict[str, Any]) -> None:
    """Refuse a statement the in-toto Statement v1 or SLSA Provenance v1 schema refuses."""
    try:
        predicate = document["predicate"]
        json_format.ParseDict(predicate, provenance_pb2.Provenance())
        parsed = Statement(
            [ResourceDescriptor(**_descriptor(s)).pb for s in document["subject"]],
            document["predicateType"],
            predicate,
        )
        parsed.validate()
        for dependency in predicate["buildDefinition"]["resolvedDependencies"]:
            ResourceDescriptor(**_descriptor(dependency)).validate()
        if document["_type"] != STATEMENT_TYPE or document["predicateType"] != PREDICATE_TYPE:
            raise ValueError("not an in-toto Statement v1 of SLSA Provenance v1")
    except (KeyError, TypeError, ValueError, json_format.ParseError) as exc:
        raise ProvenanceError(f"not valid SLSA provenance: {exc}") from None


def _descriptor(data: dict[str, Any]) -> dict[str, Any]:
    known = ("name", "uri", "digest", "annotations")
    if set(data) - set(known):
        raise ValueError(f"unknown fields in a resource descriptor: {sorted(set(data))}")
    return {k: data[k] for k in known if k in data}


def sign(document: dict[str, Any], signer: Signer) -> str:
    """The DSSE envelope of a statement, as one JSON line."""
    payload = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    envelope = Envelope(payload=payload, payload_type=PAYLOAD_TYPE, signatures={})
    envelope.sign(signer)
    return json.dumps(envelope.to_dict(), sort_keys=True) + "\n"


def open_envelope(text: bytes, key: Key) -> dict[str, Any]:
    """The statement of an envelope signed by key; anything else is one ProvenanceError."""
    try:
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) != 1:
            raise ValueError(f"{len(lines)} lines, not one envelope")
        envelope = Envelope.from_dict(json.loads(lines[0]))
    except (ValueError, KeyError, TypeError) as exc:
        raise ProvenanceError(f"not a DSSE envelope: {exc}") from None
    if envelope.payload_type != PAYLOAD_TYPE:
        raise ProvenanceError(f"the envelope holds {envelope.payload_type!r}, not in-toto")
    try:
        envelope.verify([key], 1)
    except VerificationError:
        raise ProvenanceError(f"the signature is not by key {key.keyid[:16]}") from None
    try:
        document = json.loads(envelope.payload)
    except ValueError:
        raise ProvenanceError("the signed payload is not JSON") from None
    check_schema(document)
    return dict(document)


def check_record(document: dict[str, Any], record: BuildRecord) -> None:
    """The provenance is this build's, and names every file and image id it has now: an
    envelope of another build, or one signed before an import, is refused."""
    metadata = document["predicate"].get("runDetails", {}).get("metadata", {})
    if metadata.get("invocationId") != record.id:
        raise ProvenanceError(f"the provenance is not of build {record.id}")
    named = {s["name"]: s["digest"].get("sha256") for s in document["subject"]}
    for artifact in (*record.artifacts, *record.derived):
        if named.get(artifact.path) != artifact.sha256:
            raise ProvenanceError(f"the signed provenance does not name {artifact.path} as built")
    wanted = [s["name"] for s in subjects(record) if _is_image(s)]
    if missing := [name for name in wanted if name not in named]:
        raise ProvenanceError(
            f"the signed provenance does not name image {missing[0]}",
            hint=f"`invoke attest sign {record.id}` signs it with every image it has now",
        )


def check_files(document: dict[str, Any], directory: Path, *, present: bool = False) -> list[str]:
    """Re-hash every file subject in directory; the files checked. A changed file is a
    ProvenanceError, and so is a missing one (with present: only when none is there)."""
    checked = []
    for subject in document["subject"]:
        name = subject["name"]
        if _is_image(subject):
            continue
        path = directory / name
        if not path.resolve().is_relative_to(directory.resolve()):
            raise ProvenanceError(f"subject {name!r} is outside the build directory")
        if present and not path.is_file():
            continue
        if not path.is_file():
            raise ProvenanceError(f"{name}: the file is missing")
        if _sha256(path) != subject["digest"].get("sha256"):
            raise ProvenanceError(f"{name}: its sha256 differs from the signed one")
        checked.append(name)
    if present and not checked:
        raise ProvenanceError(
            f"none of the files the provenance names is in {directory}",
            hint="put the envelope beside the box or image, or give --image-id",
        )
    return checked


def names_image(document: dict[str, Any], image_id: str) -> str | None:
    """The subject naming image_id (cloud:place:id), if the provenance has one."""
    for subject in document["subject"]:
        name = str(subject["name"])
        named = _is_image(subject) and name.rsplit(":", 1)[-1] == image_id
        if named and subject == image_subject(*name.split(":", 2)):
            return name
    return None


def _is_image(subject: dict[str, Any]) -> bool:
    return bool((subject.get("annotations") or {}).get(IMAGE))


def label_value(digest: str) -> str:
    """The digest as a GCP label value (lower case, ≤63 characters): base32 of its bytes."""
    return base64.b32encode(bytes.fromhex(digest)).decode().rstrip("=").lower()
