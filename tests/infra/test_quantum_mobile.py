"""quantum-mobile: AiiDA, JupyterLab and Quantum ESPRESSO, used the way a scientist uses them.

The image user finds verdi, jupyter and pw.x in a login shell (SSH, console, `sudo -iu`), and
verdi speaks without warnings. A real calculation goes through AiiDA: a small Quantum ESPRESSO SCF of bulk silicon is submitted
to the daemon and its energy parsed by aiida-quantumespresso. Its result is kept next to the
artifacts (calculation.json). Secrets are never shown in an assertion; of the instance's
secrets only their sha256 digests are kept (instance-secrets.json), so that another boot of the
same artifact can be shown to make different ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import urllib.error
import urllib.request
from pathlib import Path

import pytest

PORTS = json.loads(os.environ.get("IMAGEFORGE_PORTS") or "{}")
ARTIFACTS = Path(os.environ.get("IMAGEFORGE_ARTIFACTS") or ".")
SETTINGS = "/etc/imageforge/aiida.json"
# Left by imageforge-cpu-check.service when the CPU is not x86-64-v2 (numpy would not run).
CPU_UNSUPPORTED = "/run/imageforge/cpu-unsupported"
# Bulk silicon, 2 atoms, LDA norm-conserving, 15 Ry, 2x2x2 k-points: about -213 eV.
ENERGY_RANGE_EV = (-220.0, -205.0)
SCF = """
import json, time
from aiida import load_profile, orm
from aiida.engine import submit
from aiida.plugins import CalculationFactory

load_profile()
a = 5.43
structure = orm.StructureData(cell=[[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]])
structure.append_atom(position=(0, 0, 0), symbols="Si")
structure.append_atom(position=(a / 4, a / 4, a / 4), symbols="Si")
kpoints = orm.KpointsData()
kpoints.set_kpoints_mesh([2, 2, 2])
builder = CalculationFactory("quantumespresso.pw").get_builder()
builder.code = orm.load_code("pw@localhost")
builder.structure = structure
builder.kpoints = kpoints
builder.pseudos = {"Si": orm.UpfData(file="/usr/share/imageforge/pseudo/Si.pz-tm.UPF")}
builder.parameters = orm.Dict(
    {"CONTROL": {"calculation": "scf"}, "SYSTEM": {"ecutwfc": 15.0}, "ELECTRONS": {}}
)
builder.metadata.options.resources = {"num_machines": 1, "num_mpiprocs_per_machine": 1}
builder.metadata.options.withmpi = False
builder.metadata.options.max_wallclock_seconds = 900
node = submit(builder)
deadline = time.time() + 1200
while not node.is_terminated and time.time() < deadline:
    time.sleep(2)
outputs = node.outputs.output_parameters.get_dict() if "output_parameters" in node.outputs else {}
print(json.dumps({
    "pk": node.pk,
    "state": node.process_state.value if node.process_state else None,
    "exit_status": node.exit_status,
    "energy": outputs.get("energy"),
    "energy_units": outputs.get("energy_units"),
    "wall_time_seconds": outputs.get("wall_time_seconds"),
    "code_version": outputs.get("code_version"),
}))
"""


@pytest.fixture(scope="module")
def qm(host) -> dict:
    """The image's AiiDA settings, and the user it serves."""
    settings = json.loads(host.file(SETTINGS).content_string)
    return {**settings, "home": host.user(settings["user"]).home}


def as_user(qm: dict, command: str) -> str:
    return f"sudo -n -u {qm['user']} -H {command}"


def login_shell(qm: dict, command: str) -> str:
    """command in the image user's login shell, as `sudo -iu max` (and the console) give it."""
    return f"sudo -n -iu {qm['user']} {command}"


@pytest.fixture(scope="module")
def secrets(host, qm) -> dict[str, str]:
    """The instance's secrets (read as root in one call); their digests go to the artifacts."""
    sections = {
        "cookie": "cat /var/lib/rabbitmq/.erlang.cookie",
        "token": f"cat {qm['home']}/jupyter-token.txt",
        "database_password": f"python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))"
        f'["profiles"]["quantum-mobile"]["storage"]["config"]["database_password"])\' '
        f"{qm['home']}/.aiida/config.json",
        "snakeoil": "cat /etc/ssl/private/ssl-cert-snakeoil.key",
        "modes": f"stat -c '%n %U %a' /var/lib/rabbitmq/.erlang.cookie "
        f"{qm['home']}/jupyter-token.txt {qm['home']}/.jupyter/jupyter_server_config.json",
        "listening": "ss -Hltn",
        # The running broker's value, whatever file set it: undefined is no timeout at all.
        "consumer_timeout": "rabbitmqctl -q eval 'application:get_env(rabbit, consumer_timeout).'",
    }
    # Each section ends on a line of its own, even when its output has no final newline.
    script = "".join(f"echo '### {k}'; ( {v} ) 2>&1; echo; " for k, v in sections.items())
    out = host.check_output(f"sudo -n sh -c {shlex.quote(script)}")
    facts: dict[str, str] = {}
    current = ""
    for line in out.splitlines():
        if line.startswith("### "):
            current = line.removeprefix("### ")
            facts[current] = ""
        else:
            facts[current] += line + "\n"
    digests = {
        name: hashlib.sha256(facts[name].strip().encode()).hexdigest()
        for name in ("cookie", "token", "database_password", "snakeoil")
    }
    (ARTIFACTS / "instance-secrets.json").write_text(json.dumps(digests, indent=2) + "\n")
    return facts


def test_cpu_is_x86_64_v2(host):
    """The boot-time check ran and found every feature numpy needs (else AiiDA stays stopped)."""
    active = host.run("systemctl is-active imageforge-cpu-check.service").stdout.strip()
    assert active == "active", host.run("systemctl status imageforge-cpu-check").stdout
    marker = host.run(f"cat {CPU_UNSUPPORTED}")
    assert marker.rc != 0, f"this CPU lacks {marker.stdout.strip()}"


def test_verdi_status_in_a_login_shell_reports_every_component_ok(host, qm):
    """`sudo -iu max verdi status`: found on the PATH, the profile loaded, nothing to warn of
    (RabbitMQ's version warning is off: the broker is configured as AiiDA needs)."""
    status = host.run(login_shell(qm, "verdi status"))
    output = status.stdout + status.stderr
    assert status.rc == 0, output
    for component in ("profile", "storage", "broker", "daemon"):
        assert any(
            line.lstrip().startswith("✔") and component in line
            for line in status.stdout.splitlines()
        ), f"{component} not OK:\n{output}"
    assert any(
        "profile" in line and "quantum-mobile" in line for line in status.stdout.splitlines()
    ), output
    assert "✘" not in output and "⏺" not in output, output
    assert "warning" not in output.lower() and "not supported" not in output, output


def test_rabbitmq_version_warning_is_off_in_the_aiida_config(host, qm):
    config = json.loads(host.check_output(as_user(qm, f"cat {qm['home']}/.aiida/config.json")))
    assert config["options"].get("warnings.rabbitmq_version") is False, config["options"]
    assert config["default_profile"] == "quantum-mobile"


def session(qm: dict, how: str, command: str) -> str:
    """command as the image user would run it. The suite logs in as the cloud's default user,
    so an SSH session of the image user is what sshd makes of one: its compiled-in PATH and
    the user's shell, a login shell for a terminal, a plain `bash -c` for `ssh max@vm command`."""
    if how == "sudo -iu":
        return login_shell(qm, f"sh -c {shlex.quote(command)}")
    sshd = (
        f"env -i HOME={qm['home']} USER={qm['user']} LOGNAME={qm['user']} SHELL=/bin/bash "
        "PATH=/usr/local/bin:/usr/bin:/bin:/usr/games"
    )
    flags = "-lc" if how == "ssh terminal" else "-c"
    return f"sudo -n -u {qm['user']} {sshd} bash {flags} {shlex.quote(command)}"


@pytest.mark.parametrize("how", ["sudo -iu", "ssh terminal", "ssh command"])
def test_image_user_finds_verdi_jupyter_and_pw(host, qm, how):
    found = host.run(
        session(qm, how, "cd && command -v verdi && command -v jupyter && command -v pw.x")
    )
    assert found.rc == 0, f"not all on the PATH:\n{found.stdout}{found.stderr}"
    paths = found.stdout.split()
    assert [Path(p).name for p in paths] == ["verdi", "jupyter", "pw.x"], paths
    if how != "ssh command":  # a login shell has the whole environment first, python too
        assert paths[0] == f"{qm['venv']}/bin/verdi", paths
        python = host.run(session(qm, how, "cd && python -c 'import aiida'"))
        assert python.rc == 0, python.stderr


def test_rabbitmq_consumer_timeout_is_off(secrets):
    """AiiDA's long-running processes must not be cancelled by RabbitMQ (3.8.15 and later)."""
    assert "{ok,undefined}" in secrets["consumer_timeout"], secrets["consumer_timeout"]


def test_secrets_are_generated_and_private(secrets, qm):
    for name in ("cookie", "token", "database_password", "snakeoil"):
        value = secrets[name].strip()
        ok = len(value) >= 20 and "No such file" not in value
        assert ok, f"no per-instance {name}"
    modes = [line.split() for line in secrets["modes"].strip().splitlines()]
    assert [m[1:] for m in modes] == [["rabbitmq", "400"], [qm["user"], "600"], [qm["user"], "600"]]


def test_services_listen_on_loopback_only(secrets, qm):
    """PostgreSQL, RabbitMQ (AMQP and Erlang distribution) and epmd: loopback only."""
    listening: dict[int, set[str]] = {}
    for line in secrets["listening"].splitlines():
        if not line.strip():
            continue
        local = line.split()[3]
        address, _, port = local.rpartition(":")
        listening.setdefault(int(port), set()).add(address)
    for port in (5432, 5672, 4369, 25672):
        assert port in listening, f"nothing listens on {port}: {listening}"
        assert listening[port] <= {"127.0.0.1", "[::1]"}, f"{port}: {listening[port]}"
    assert listening.get(qm["jupyter_port"]) == {"0.0.0.0"}


def jupyter(path: str, token: str | None = None) -> int:
    port = PORTS[str(8888)] if "8888" in PORTS else None
    assert port, f"the Jupyter port was not forwarded: {PORTS}"
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        request.add_header("Authorization", f"token {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_jupyterlab_answers_with_the_token_and_refuses_without(secrets):
    token = secrets["token"].strip()
    assert jupyter("/api/status", token) == 200
    assert jupyter("/api/kernelspecs", token) == 200
    assert jupyter("/api/status") == 403
    assert jupyter("/api/status", "not-the-token") == 403


def test_aiida_kernel_is_offered(host, qm):
    spec = host.file(f"{qm['venv']}/share/jupyter/kernels/aiida/kernel.json").content_string
    assert "load_profile()" in spec


def test_pw_scf_through_the_aiida_daemon(host, qm):
    """Bulk silicon SCF, submitted to the daemon; aiida-quantumespresso parses the energy."""
    daemon = host.run(as_user(qm, f"{qm['venv']}/bin/verdi daemon status"))
    assert daemon.rc == 0, f"the AiiDA daemon is not running:\n{daemon.stdout}{daemon.stderr}"
    command = as_user(qm, f"{qm['venv']}/bin/python -c {shlex.quote(SCF)}")
    result = host.run(command)
    assert result.rc == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    (ARTIFACTS / "calculation.json").write_text(json.dumps(outcome, indent=2) + "\n")
    assert outcome["state"] == "finished" and outcome["exit_status"] == 0, outcome
    assert outcome["energy_units"] == "eV"
    low, high = ENERGY_RANGE_EV
    assert low < outcome["energy"] < high, outcome
