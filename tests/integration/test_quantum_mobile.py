"""quantum-mobile for real: one `invoke build` (its verification runs an SCF through AiiDA), the
artifact read offline, a second instance that must make secrets of its own, and a relaunch of
that instance's disk that must keep its data."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from .conftest import Offline, processes_mentioning
from .guest import booted

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def built(quantum_mobile_build) -> tuple[dict, Path]:
    project, result = quantum_mobile_build
    assert result.returncode == 0, result.stderr[-4000:]
    [path] = sorted((project / "artifacts" / "quantum-mobile").glob("*/build.json"))
    return json.loads(path.read_text()), path.parent


def test_build_is_verified_by_a_calculation_through_aiida(built) -> None:
    record, directory = built
    assert record["status"] == "verified"
    # Verified for exactly these artifacts: the binding holds each one's sha256.
    assert record["binding"]["artifacts"] == {a["path"]: a["sha256"] for a in record["artifacts"]}
    assert record["verification"]["failed"] == 0
    calculation = json.loads((directory / "calculation.json").read_text())
    assert calculation["exit_status"] == 0 and -220 < calculation["energy"] < -205
    # The Python environment came from the layer, natively: the record lists it.
    assert record["python_packages"]["aiida-core"].startswith("2.")
    assert record["python_packages"]["aiida-quantumespresso"]
    assert record["packages"]["quantum-espresso"] and record["packages"]["rabbitmq-server"]
    assert "pip install" not in (directory / "build.log").read_text()
    # The verification instance's Jupyter token reached its console; the kept log has it redacted.
    console = (directory / "verify-serial.log").read_text(errors="replace")
    assert "imageforge-secret: jupyter_token=[redacted]" in console
    # The verification VM's CPU model is x86-64-v2: the boot-time check had nothing to say.
    assert "imageforge-cpu:" not in console


def test_artifact_holds_no_instance_secret(built, tmp_path: Path) -> None:
    offline = Offline(built[1] / "image" / "quantum-mobile.qcow2", tmp_path)
    assert "aiida.json" in offline.files("/etc/imageforge")  # the right file system
    assert "imageforge-quantum-mobile.sh" in offline.files("/etc/profile.d")
    assert {"imageforge-aiida-setup", "imageforge-cpu-check"} <= set(
        offline.files("/usr/local/sbin")
    )
    assert ".erlang.cookie" not in offline.files("/var/lib/rabbitmq")
    assert "ssl-cert-snakeoil.key" not in offline.files("/etc/ssl/private")
    home = offline.names("/home/max")
    assert not any(name in row for row in home for name in ("jupyter-token", ".aiida"))
    assert offline.files("/var/lib/imageforge/private") == {}
    assert "pip" not in "".join(offline.names("/root/.cache"))


WAIT_FOR_AIIDA = (
    "until systemctl -q is-active imageforge-aiida.service; do "
    "systemctl -q is-failed imageforge-aiida.service && exit 1; "
    "test -e /run/imageforge/cpu-unsupported && exit 2; sleep 2; done"
)
STORE_NODE = (
    "sudo -iu max python -c 'from aiida import load_profile, orm; load_profile(); "
    "print(orm.Int(42).store().uuid)'"
)


def secrets_of(guest) -> dict[str, str]:
    """This instance's secrets, and its SSH host key (which is the machine's, not the user's)."""
    return {
        "cookie": guest.output("sudo cat /var/lib/rabbitmq/.erlang.cookie"),
        "token": guest.output("sudo cat /home/max/jupyter-token.txt"),
        "database_password": guest.output(
            "sudo python3 -c 'import json; print(json.load(open(\"/home/max/.aiida/"
            'config.json"))["profiles"]["quantum-mobile"]["storage"]["config"]'
            '["database_password"])\''
        ),
        "snakeoil": guest.output("sudo cat /etc/ssl/private/ssl-cert-snakeoil.key"),
        "host_key": guest.output("cat /etc/ssh/ssh_host_ed25519_key.pub"),
    }


def wait_for_aiida(guest) -> None:
    # The secrets are made by imageforge-aiida.service; the daemon and JupyterLab, which start
    # after it, are not waited for (the verification boot checked them). On a CPU that is not
    # x86-64-v2 the unit is skipped: say so rather than wait for nothing.
    waited = guest.ssh(WAIT_FOR_AIIDA, timeout=1500)
    assert waited.returncode == 0, guest.output(
        "cat /run/motd.d/40-imageforge-cpu; sudo journalctl -b -u imageforge-aiida -o cat"
    )


def test_a_second_instance_makes_its_own_secrets_and_a_relaunch_keeps_the_users_data(
    built, tmp_path: Path
) -> None:
    """A new instance of the artifact gets secrets of its own. A relaunched copy of that
    instance's disk (a snapshot, with a new instance id) keeps its AiiDA data and its secrets;
    only the machine's own keys are new."""
    directory = built[1]
    first = json.loads((directory / "instance-secrets.json").read_text())
    second_dir = tmp_path / "second"
    with booted(
        directory / "image" / "quantum-mobile.qcow2", second_dir, instance_id="qm-2", user_data={}
    ) as guest:
        wait_for_aiida(guest)
        values = secrets_of(guest)
        assert guest.vm.secrets["jupyter_token"] == values["token"].strip()
        assert "imageforge-secret: jupyter_token=[redacted]" in guest.vm.console()
        assert values["token"].strip() not in guest.vm.console()
        node = guest.output(STORE_NODE).splitlines()[-1].strip()
        guest.ssh("sudo systemctl stop aiida-daemon jupyterlab postgresql && sync", timeout=300)
    second = {k: hashlib.sha256(v.strip().encode()).hexdigest() for k, v in values.items()}
    for name in ("cookie", "token", "database_password", "snakeoil"):
        assert first[name] != second[name], f"the {name} is the same in two instances"
    # The relaunch: the second instance's disk, under a new instance id.
    with booted(
        second_dir / "overlay.qcow2", tmp_path / "relaunch", instance_id="qm-3", user_data={}
    ) as guest:
        wait_for_aiida(guest)
        found = guest.output(
            "sudo -iu max python -c 'from aiida import load_profile, orm; load_profile(); "
            f'print(orm.load_node("{node}").value)\''
        )
        relaunched = secrets_of(guest)
        assert guest.vm.secrets == {}, "a kept token is not announced again"
    assert found.splitlines()[-1].strip() == "42", found
    for name in ("cookie", "token", "database_password"):
        assert relaunched[name] == values[name], f"the relaunch replaced the {name}"
    assert relaunched["host_key"] != values["host_key"], "the relaunch kept the old host key"
    assert processes_mentioning(str(tmp_path)) == []
