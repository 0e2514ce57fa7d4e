"""Signed SLSA provenance: the key pair, the statement and its schemas, and verification, with
the real in-toto and securesystemslib libraries and the real `invoke` command line."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imageforge import config
from imageforge.config import matrix
from imageforge.errors import ImageforgeError
from imageforge.records import provenance, signingkeys, state
from imageforge.records.provenance import ProvenanceError
from imageforge.stages import attest
from tests.records import make_record

from ..conftest import write

IMAGES_YML = "flavors:\n  slurm-node: {}\nmatrix:\n  clouds: [local, aws]\n"
BUILD = "20260101-000000-abcdef0-000001"
SBOM = {
    "bomFormat": "CycloneDX",
    "components": [
        {"name": "curl", "purl": "pkg:deb/debian/curl@7.88.1-10%2Bdeb12u8?arch=amd64"},
        {"name": "bash", "purl": "pkg:deb/debian/bash@5.2.15-2%2Bb7?arch=amd64"},
        {"name": "aiida-core", "purl": "pkg:pypi/aiida-core@2.6.3"},
    ],
}


@pytest.fixture
def project(
    scratch: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    write(scratch, IMAGES_YML)
    (scratch / "tasks.py").write_text((Path(__file__).parents[3] / "tasks.py").read_text())
    keys = tmp_path_factory.mktemp("keys") / "mine"
    monkeypatch.setenv("IMAGEFORGE_SIGNING_KEY", str(keys / "signing-key"))
    return scratch


@pytest.fixture
def key(project: Path) -> Path:
    """The public half of a new key pair, at IMAGEFORGE_SIGNING_KEY."""
    return signingkeys.generate(signingkeys.private_path())[1]


def verified(project: Path, **facts: object) -> state.BuildRecord:
    record = make_record(
        project / "artifacts",
        build_id=BUILD,
        git_commit="0123456789abcdef" * 2 + "01234567",
        os="debian-12",
        **facts,
    )
    (record.directory / "sbom.cdx.json").write_text(json.dumps(SBOM))
    outcome = {**state.load(record.directory).verification, **{"passed": 3, "failed": 0}}
    outcome |= {"errors": 0, "failures": [], "sbom": "sbom.cdx.json"}
    return state.verification_done(state.load(record.directory), outcome)


def aws_build(project: Path) -> state.BuildRecord:
    """A verified AWS build: its Packer manifest, and the AMI it made in eu-west-1."""
    files = {"manifest.json": b"{}"}
    ids = {"eu-west-1": "ami-0a"}
    return make_record(
        project / "artifacts", cloud="aws", build_id=BUILD, artifact_ids=ids, files=files
    )


def signed(project: Path, record: state.BuildRecord) -> Path:
    cell = matrix.find(config.load(project / "images.yml"), record.flavor, record.cloud)
    path = attest.attest(config.load(project / "images.yml"), cell, record)
    assert path is not None
    return path


def test_keygen_makes_a_private_key_only_its_owner_reads(project: Path) -> None:
    private, public = signingkeys.generate(signingkeys.private_path())
    assert private.stat().st_mode & 0o777 == 0o600
    assert private.parent.stat().st_mode & 0o777 == 0o700
    assert b"PRIVATE KEY" in private.read_bytes() and b"PUBLIC KEY" in public.read_bytes()
    with pytest.raises(ImageforgeError, match="already there"):
        signingkeys.generate(private)


def test_keygen_never_writes_through_a_planted_link(project: Path) -> None:
    target = project / "elsewhere"
    private = signingkeys.private_path()
    private.parent.mkdir(parents=True)
    private.symlink_to(target)
    with pytest.raises(ImageforgeError, match="already there"):
        signingkeys.generate(private)
    assert not target.exists()


def test_a_key_others_can_read_is_not_used(project: Path, key: Path) -> None:
    signingkeys.private_path().chmod(0o640)
    with pytest.raises(ImageforgeError, match="readable by other users"):
        signingkeys.signer()


def test_the_statement_names_every_subject_and_dependency(project: Path) -> None:
    record = verified(project, artifact_ids={})
    debs = project / "debs"
    debs.mkdir()
    (debs / "curl_7.88.1-10+deb12u8_amd64.deb").write_bytes(b"the installed curl")
    document = provenance.statement(record, project, ["provisioners/cleanup/90-cleanup.sh"], debs)
    names = {s["name"]: s["digest"]["sha256"] for s in document["subject"]}
    assert names == {
        "image/slurm-node.qcow2": state.sha256(record.directory / "image/slurm-node.qcow2"),
        "sbom.cdx.json": state.sha256(record.directory / "sbom.cdx.json"),
    }
    definition = document["predicate"]["buildDefinition"]
    assert definition["externalParameters"]["flavor"] == "slurm-node"
    assert definition["internalParameters"]["templateHash"] == record.template_hash
    deps = {d.get("name") or d["uri"]: d.get("digest") for d in definition["resolvedDependencies"]}
    assert deps["source"] == {"gitCommit": record.git_commit}
    cleanup = project / "provisioners/cleanup/90-cleanup.sh"
    assert deps["provisioners/cleanup/90-cleanup.sh"] == {"sha256": state.sha256(cleanup)}
    curl = "pkg:deb/debian/curl@7.88.1-10%2Bdeb12u8?arch=amd64"
    assert deps[curl] == {"sha256": state.sha256(debs / "curl_7.88.1-10+deb12u8_amd64.deb")}
    assert deps["pkg:deb/debian/bash@5.2.15-2%2Bb7?arch=amd64"] is None  # not in the cache
    assert "pkg:pypi/aiida-core@2.6.3" in deps
    builder = document["predicate"]["runDetails"]["builder"]["version"]
    assert set(builder) == {"imageforge", "packer", "qemu"}


def test_cloud_image_ids_per_region_are_subjects(project: Path) -> None:
    record = aws_build(project)
    record = state.distributed(record, {"us-east-1": "ami-0b"})
    names = [s["name"] for s in provenance.subjects(record)]
    assert names == ["manifest.json", "aws:eu-west-1:ami-0a", "aws:us-east-1:ami-0b"]


def test_the_schemas_refuse_what_slsa_does_not_define(project: Path) -> None:
    document = provenance.statement(verified(project), project, [], None)
    provenance.check_schema(document)
    bad = json.loads(json.dumps(document))
    bad["predicate"]["buildDefinition"]["buildTypo"] = "x"
    with pytest.raises(ProvenanceError, match="not valid SLSA provenance"):
        provenance.check_schema(bad)
    no_digest = json.loads(json.dumps(document))
    no_digest["subject"][0]["digest"] = {}
    with pytest.raises(ProvenanceError, match="digest"):
        provenance.check_schema(no_digest)


def test_a_signed_build_verifies_and_every_tampering_is_refused(project: Path, key: Path) -> None:
    record = verified(project)
    envelope = signed(project, record)
    assert envelope.stat().st_mode & 0o777 == 0o644
    assert attest.verify_build(record, key) == ["image/slurm-node.qcow2", "sbom.cdx.json"]
    # a flipped byte in the qcow2
    image = record.directory / "image/slurm-node.qcow2"
    original = image.read_bytes()
    image.write_bytes(bytes([original[0] ^ 1]) + original[1:])
    with pytest.raises(ProvenanceError, match=r"^image/slurm-node.qcow2: its sha256 differs"):
        attest.verify_build(record, key)
    image.write_bytes(original)
    # a changed envelope: the payload says another commit
    data = json.loads(envelope.read_text())
    payload = json.loads(base64.b64decode(data["payload"]))
    payload["predicate"]["runDetails"]["metadata"]["invocationId"] = "another"
    data["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    envelope.write_text(json.dumps(data) + "\n")
    with pytest.raises(ProvenanceError, match="the signature is not by key"):
        attest.verify_build(record, key)
    # the wrong key
    signed(project, record)
    other = signingkeys.generate(project / "other" / "key")[1]
    with pytest.raises(ProvenanceError, match="the signature is not by key"):
        attest.verify_build(record, other)
    attest.verify_build(record, key)


def test_an_unsigned_build_is_said_and_refused_under_require_signed(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record = verified(project)
    images = config.load(project / "images.yml")
    assert attest.attest(images, matrix.find(images, "slurm-node", "local"), record) is None
    assert "is unsigned" in capsys.readouterr().err
    with pytest.raises(ProvenanceError, match="require_signed needs the public key"):
        attest.require_signed(record, None)
    signingkeys.generate(signingkeys.private_path())
    with pytest.raises(ProvenanceError, match="has no provenance"):
        attest.require_signed(record, None)


def test_an_image_id_verifies_with_only_the_envelope_and_the_key(project: Path, key: Path) -> None:
    record = aws_build(project)
    envelope = signed(project, record)
    alone = project / "downloaded.intoto.jsonl"
    alone.write_bytes(envelope.read_bytes())
    assert attest.verify_image(alone, key, "ami-0a") == "aws:eu-west-1:ami-0a"
    with pytest.raises(ProvenanceError, match="does not name image ami-0c"):
        attest.verify_image(alone, key, "ami-0c")


def invoke(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=project,
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )


def test_the_command_line_keygen_verify_and_refusals(project: Path) -> None:
    made = invoke(project, "keygen")
    assert made.returncode == 0, made.stderr
    record = verified(project)
    signed(project, record)
    ok = invoke(project, "attest", "verify", BUILD)
    assert ok.returncode == 0 and "re-hashed 2 files" in ok.stdout, ok.stderr
    by_file = invoke(project, "attest", "verify", str(record.directory / provenance.FILE))
    assert by_file.returncode == 0 and "re-hashed 2 files" in by_file.stdout
    (record.directory / "sbom.cdx.json").write_text("{}")
    refused = invoke(project, "attest", "verify", BUILD)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "error: sbom.cdx.json: its sha256 differs from the signed one"
    ]
    again = invoke(project, "keygen")
    assert again.returncode == 1 and "already there" in again.stderr
    usage = invoke(project, "attest", "check", BUILD)
    assert usage.returncode == 2 and "not one of verify, sign" in usage.stderr
    no_key = invoke(project, "attest", "verify", BUILD, "--key", str(project / "nope.pub"))
    assert no_key.returncode == 2 and "cannot read the public key" in no_key.stderr


def test_an_envelope_must_be_of_this_build_and_name_all_it_has_now(
    project: Path, key: Path
) -> None:
    record = aws_build(project)
    envelope = signed(project, record)
    other = make_record(
        project / "artifacts", cloud="aws", build_id="20260101-000000-abcdef0-000002",
        artifact_ids={"eu-west-1": "ami-0a"}, files={"manifest.json": b"{}"},
    )  # fmt: skip
    (other.directory / provenance.FILE).write_bytes(envelope.read_bytes())
    with pytest.raises(ProvenanceError, match=f"not of build {other.id}"):
        attest.verify_build(other, key)
    imported = state.imported(record, "openstack:lab", "glance-1")
    with pytest.raises(ProvenanceError, match="does not name image openstack:lab:glance-1"):
        attest.require_signed(imported, key)
    signed(project, imported)
    attest.require_signed(imported, key)
    assert attest.verify_image(envelope, key, "glance-1") == "openstack:lab:glance-1"


def test_a_downloaded_envelope_rehashes_the_files_beside_it(project: Path, key: Path) -> None:
    record = verified(project)
    envelope = signed(project, record)
    download = project / "download"
    download.mkdir()
    (download / provenance.FILE).write_bytes(envelope.read_bytes())
    with pytest.raises(ProvenanceError, match="none of the files the provenance names is in"):
        attest.verify_file(download / provenance.FILE, key)
    sbom = (record.directory / "sbom.cdx.json").read_bytes()
    (download / "sbom.cdx.json").write_bytes(sbom)
    assert attest.verify_file(download / provenance.FILE, key) == ["sbom.cdx.json"]
    (download / "sbom.cdx.json").write_bytes(sbom + b" ")
    with pytest.raises(ProvenanceError, match=r"sbom\.cdx\.json: its sha256 differs"):
        attest.verify_file(download / provenance.FILE, key)


def test_a_build_whose_files_changed_since_verification_is_not_signed(
    project: Path, key: Path
) -> None:
    record = verified(project)
    (record.directory / "image/slurm-node.qcow2").write_bytes(b"QFI\xfb another image")
    with pytest.raises(ImageforgeError, match="is not verified"):
        signed(project, record)
    assert not (record.directory / provenance.FILE).exists()


@pytest.mark.parametrize("text", ["[]", '{"components": {}}', '{"components": [{"purl": "x"}]}'])
def test_an_sbom_provenance_cannot_read_is_one_clear_error(project: Path, text: str) -> None:
    record = verified(project)
    (record.directory / "sbom.cdx.json").write_text(text)
    with pytest.raises(ProvenanceError, match="not an SBOM provenance can list"):
        provenance.statement(record, project, [], None)
