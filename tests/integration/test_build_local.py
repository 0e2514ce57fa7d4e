"""Local builds for real: packer + QEMU build slurm-node, testinfra verifies it; faults clean up."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imageforge.stages.stepcache import StepCache

from .conftest import copy_project, invoke, processes_mentioning, signing_key, temp_leftovers

pytestmark = pytest.mark.integration


def records(project: Path, flavor: str) -> list[dict]:
    return [
        json.loads(p.read_text())
        for p in sorted((project / "artifacts" / flavor).glob("*/build.json"))
    ]


def test_build_and_verify_slurm_node(slurm_build) -> None:
    project, result = slurm_build
    assert result.returncode == 0, result.stderr[-4000:]
    [record] = records(project, "slurm-node")
    assert record["status"] == "verified"
    # Verified for exactly these artifacts: the binding holds each one's sha256.
    assert record["binding"]["artifacts"] == {a["path"]: a["sha256"] for a in record["artifacts"]}
    assert record["verification"]["failed"] == 0 and record["verification"]["passed"] >= 10
    directory = project / "artifacts" / "slurm-node" / record["id"]
    names = {a["path"] for a in record["artifacts"]}
    assert names == {"image/slurm-node.qcow2", "manifest.json"}
    # The box is derived from the verified image, outside the binding.
    assert [a["path"] for a in record["derived"]] == ["slurm-node.box"]
    for artifact in record["artifacts"]:
        assert (directory / artifact["path"]).stat().st_size == artifact["size"]
        assert len(artifact["sha256"]) == 64
    for name in ("build.log", "verify.junit.xml", "verify-summary.txt"):
        assert (directory / name).is_file(), name
    assert record["accelerator"] in ("kvm", "tcg")
    assert record["packer_version"] and record["qemu_version"] and record["base_image"]["sha256"]
    assert set(record["timings"]) >= {"render", "base", "packer", "verify"}
    # Packages came from the layer, natively installed: the record lists them with versions.
    assert record["packages"]["slurmd"] and record["packages"]["munge"]
    assert record["base_image"]["path"].split("/")[-3] == "layers"
    # The verification waited for a running system and kept systemd-analyze's account of it.
    boot = record["verification"]["boot"]
    assert boot["kernel_seconds"] > 0 and boot["userspace_seconds"] > 0, boot
    assert "Startup finished in" in (directory / "verify-boot.log").read_text()
    assert record["boot"]["packer_to_ssh_seconds"] > 0
    # No package was installed inside the build VM.
    assert "apt-get install" not in (directory / "build.log").read_text()
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["builds"][0]["custom_data"]["imageforge-build-id"] == record["id"]
    # The build's private key never reaches the artifacts or the log.
    assert "PRIVATE KEY" not in (directory / "build.log").read_text()
    assert processes_mentioning(str(project)) == []
    assert temp_leftovers(record["id"]) == []


def test_the_verified_build_is_signed_and_its_provenance_verifies(slurm_build) -> None:
    project, result = slurm_build
    [record] = records(project, "slurm-node")
    assert "provenance: provenance.intoto.jsonl, signed by key" in result.stderr
    directory = project / "artifacts" / "slurm-node" / record["id"]
    key = signing_key(project).with_name("signing-key.pub")
    envelope = json.loads((directory / "provenance.intoto.jsonl").read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    subjects = {s["name"] for s in statement["subject"]}
    assert subjects == {
        "image/slurm-node.qcow2",
        "manifest.json",
        "slurm-node.box",
        "sbom.cdx.json",
    }
    deps = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
    debs = [d for d in deps if d.get("uri", "").startswith("pkg:deb/")]
    # Every .deb of the layer came from the shared cache, so each has the installed file's digest.
    slurmd = [d for d in debs if d["uri"].startswith("pkg:deb/debian/slurmd@")]
    assert slurmd and "sha256" in slurmd[0].get("digest", {}), slurmd
    assert sum("digest" in d for d in debs) >= 0.9 * len(debs)
    verified = invoke(project, "attest", "verify", record["id"], "--key", str(key))
    assert verified.returncode == 0, verified.stderr
    assert "re-hashed 4 files" in verified.stdout


def test_a_node_refuses_a_wrong_value_from_multipart_user_data(slurm_build, tmp_path) -> None:
    """A worker's controller with a line break in it, in a gzipped multipart user-data (as
    several tools together write it): the first-boot program reads it through cloud-init,
    fails its unit with one line on the console and in motd, and configures nothing."""
    from imageforge.records import state

    from .guest import booted

    project, result = slurm_build
    assert result.returncode == 0, result.stderr[-4000:]
    image = state.find(project, "slurm-node", "local", None).directory / "image"
    key = "a2V5" * 11  # 33 bytes
    block = {"role": "worker", "munge_key": key, "controller": "10.0.0.1\nSLURMD_OPTIONS=-x"}
    with booted(
        image / "slurm-node.qcow2",
        tmp_path / "node",
        instance_id="hostile",
        user_data={"imageforge_slurm": block},
        multipart=True,
    ) as guest:
        running = guest.ssh("systemctl is-system-running --wait", timeout=300).stdout.strip()
        state_of = guest.ssh("systemctl is-failed imageforge-slurm.service").stdout.strip()
        motd = guest.output("cat /run/motd.d/50-imageforge-slurm")
        untouched = guest.ssh(
            "sudo test -e /etc/munge/munge.key || grep -r conf-server /etc/default"
        )
        console = guest.vm.console()
    line = (
        "imageforge-slurm: refusing the user-data, nothing changed: "
        "imageforge_slurm.controller: control characters (a line break, a tab) are not allowed"
    )
    assert (running, state_of) == ("degraded", "failed")
    assert motd == line + "\n", motd
    assert [t for t in console.splitlines() if "imageforge-slurm:" in t][-1].endswith(motd.strip())
    assert untouched.returncode == 1, "the refused user-data changed the node"
    assert "SLURMD_OPTIONS=-x" not in motd + console
    assert processes_mentioning(str(tmp_path)) == []


def test_rebuild_with_nothing_changed_reuses_the_build(slurm_build) -> None:
    project, first = slurm_build
    assert first.returncode == 0
    again = invoke(project, "build", "--image", "slurm-node")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "reusing it" in again.stderr
    assert len(records(project, "slurm-node")) == 1


FAULTY = """
flavors:
  stuck:
    provisioners:
      - provisioners/test/10-stuck.sh
matrix:
  clouds: [local]
"""


@pytest.fixture
def faulty(tmp_path: Path) -> Path:
    project = copy_project(tmp_path, FAULTY)
    tests = project / "provisioners" / "test"
    tests.mkdir()
    (tests / "10-stuck.sh").write_text(
        "#!/bin/sh\necho 'imageforge-test: provisioning'\nsleep 900\n"
    )
    return project


# SIGINT only: SIGTERM takes the same path (tests/unit/process/test_signals.py covers both), and each
# case is a VM boot of CI's time.
@pytest.mark.parametrize("sig", [signal.SIGINT], ids=["SIGINT"])
def test_signal_during_provisioning_stops_everything(
    faulty: Path, sig: signal.Signals, base_cache: Path
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", "build", "--image", "stuck"],
        cwd=faulty,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 600
    logs = faulty / "artifacts" / "stuck"
    while time.monotonic() < deadline:
        found = list(logs.glob("*/build.log"))
        if found and "imageforge-test: provisioning" in found[0].read_text():
            break
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(1)
    else:
        pytest.fail("the build never reached the provisioning stage")
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, output[-2000:]  # 130 for SIGINT, 143 for SIGTERM
    [record] = records(faulty, "stuck")
    assert record["status"] == "interrupted"
    assert processes_mentioning(str(faulty)) == []
    assert temp_leftovers(record["id"]) == []
    directory = faulty / "artifacts" / "stuck" / record["id"]
    assert not (directory / "image").exists()
    # The step cache stays whole: no half copy, and every step the record lists is usable.
    cache = StepCache(base_cache / "steps", 0)
    assert not list(cache.root.glob(".partial-*"))
    assert record["steps"] and all(cache.get(s["key"]) for s in record["steps"])
