#!/usr/bin/python3
"""Quantum Mobile: AiiDA, JupyterLab and Quantum ESPRESSO for the image user.

One program in three roles:

- run by Packer as a provisioner (no argument, as root): installs itself as
  /usr/local/sbin/imageforge-aiida-setup, makes the demo pseudopotential with Quantum ESPRESSO's
  own ld1.x, keeps RabbitMQ and epmd on loopback, writes the AiiDA kernel and the units, and
  puts the environment on the image user's PATH (verdi, jupyter and python in login shells);
- `imageforge-aiida-setup boot` (imageforge-aiida.service, as root, every boot): makes what is
  absent (Erlang cookie, Jupyter token, database password and AiiDA profile), once, and starts
  PostgreSQL and RabbitMQ. A relaunched copy of an instance (a snapshot, a clone) finds them
  and keeps them: nothing of its users' is dropped or replaced. Only the SSH host keys, which
  cloud-init makes for each new instance id, are new;
- `imageforge-aiida-setup profile` (as the image user, with the environment's Python): creates
  the AiiDA profile, the `localhost` computer and the codes; secrets arrive on stdin.

The packages (PostgreSQL, RabbitMQ, Quantum ESPRESSO) are declared in images.yml, and the Python
environment is installed natively into the flavor's layer; nothing here downloads anything.
Nothing depends on the Debian release's PostgreSQL or RabbitMQ version: PostgreSQL is reached
through postgresql.service, psql and TCP, never through a versioned path.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import string
import subprocess
import sys
import tempfile
from pathlib import Path

SETUP = Path("/usr/local/sbin/imageforge-aiida-setup")
SETTINGS = Path("/etc/imageforge/aiida.json")
PRIVATE = Path("/var/lib/imageforge/private")
PSEUDO_DIR = Path("/usr/share/imageforge/pseudo")
SI_PSEUDO = "Si.pz-tm.UPF"
COOKIE = Path("/var/lib/rabbitmq/.erlang.cookie")
TOKEN_FILE = "jupyter-token.txt"  # in the image user's home
SYSTEMD = Path("/etc/systemd/system")
LOGIN_ENV = Path("/etc/profile.d/imageforge-quantum-mobile.sh")
BIN = Path("/usr/local/bin")
# Linked into BIN, for what runs without a login shell (ssh host command, sudo -u, cron).
COMMANDS = ("verdi", "jupyter")
# Written by 25-cpu-check.py's unit, at boot, when the CPU cannot run numpy's wheels (not
# x86-64-v2): the AiiDA units are then skipped instead of crashing on an invalid opcode.
CPU_UNSUPPORTED = "/run/imageforge/cpu-unsupported"
# Debian 13's cloud-init (25.1) renamed cloud-init.service to cloud-init-network.service;
# naming both orders the units after it on either release (a missing unit orders nothing).
AFTER_CLOUD_INIT = "cloud-init.service cloud-init-network.service"
PROFILE = "quantum-mobile"
DATABASE = "aiida_qm"
# ld1.x input: a norm-conserving Troullier-Martins pseudopotential for Si, LDA (Perdew-Zunger).
SI_LD1_INPUT = """\
 &input
    title='Si', zed=14.0, rel=0, config='[Ne] 3s2 3p2', iswitch=3, dft='PZ'
 /
 &inputp
    pseudotype=1, tm=.true., lloc=1, file_pseudopw='{output}', author='imageforge'
 /
2
3S  1  0  2.00  0.00  2.40  2.40
3P  2  1  2.00  0.00  2.40  2.40
"""
RABBITMQ_ENV = """\
# imageforge: RabbitMQ and its Erlang distribution on loopback only, under a node name that
# does not change with the instance's hostname.
NODENAME=rabbit@localhost
NODE_IP_ADDRESS=127.0.0.1
ERL_EPMD_ADDRESS=127.0.0.1
SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
"""
# AiiDA's long-running processes need RabbitMQ's consumer timeout off. rabbitmq.conf takes only
# a number of milliseconds; "off" (undefined) is said in advanced.config, which RabbitMQ 3.x and
# 4.x (Debian 12: 3.10, Debian 13: 4.0) both read. AiiDA still warns about any version from
# 3.8.15 on, as it cannot see this setting: the profile turns that warning off.
RABBITMQ_ADVANCED = "[{rabbit, [{consumer_timeout, undefined}]}].\n"
EPMD_SOCKET = "[Socket]\nListenStream=\nListenStream=127.0.0.1:4369\n"


def say(message: str) -> None:
    print(f"imageforge-aiida: {message}", flush=True)


def to_console(line: str) -> None:
    """Straight to the console (the serial log a cloud shows its owner), not the journal."""
    try:
        with open("/dev/console", "w") as console:
            console.write(line + "\n")
    except OSError:
        pass


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=True, text=True, **kwargs)


def write_private(path: Path, text: str, owner: pwd.struct_passwd | None = None) -> None:
    """A file only its owner can read, created so (never world-readable for a moment)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    if owner is not None:
        os.chown(path, owner.pw_uid, owner.pw_gid)


# ---------------------------------------------------------------------------------------------
# At build time, as a provisioner.


def build() -> int:
    settings = json.loads(os.environ.get("IMAGEFORGE_AIIDA") or "{}")
    venv = Path(os.environ.get("IMAGEFORGE_VENV") or "/opt/venv")
    user = os.environ["IMAGE_USER"]
    if not (venv / "bin" / "verdi").is_file():
        print(f"no AiiDA in {venv}: declare it under the flavor's `python:`", file=sys.stderr)
        return 2
    settings.update(venv=str(venv), user=user)
    SETTINGS.parent.mkdir(parents=True, exist_ok=True)
    SETTINGS.write_text(json.dumps(settings, indent=2) + "\n")
    shutil.copyfile(__file__, SETUP)
    SETUP.chmod(0o755)
    PRIVATE.mkdir(mode=0o700, parents=True, exist_ok=True)
    make_pseudopotential()
    keep_rabbitmq_on_loopback()
    write_kernel(venv)
    write_units(venv, user, int(settings.get("jupyter_port", 8888)))
    write_login_environment(venv)
    # Started by imageforge-aiida.service once the instance has its own secrets; stopped now,
    # so that the build VM's RabbitMQ writes no state (its cookie, its database) into the image.
    run(["systemctl", "disable", "--now", "--quiet", "postgresql", "rabbitmq-server"])
    subprocess.run(["systemctl", "stop", "epmd.socket", "epmd.service"], check=False)
    # --no-reload: enabled for the next boot; a daemon-reload in the build VM costs seconds.
    units = ("imageforge-aiida", "aiida-daemon", "jupyterlab")
    run(["systemctl", "enable", "--no-reload", "--quiet", *units])
    print(f"AiiDA set-up installed for {user}: profile, daemon and JupyterLab start at boot")
    return 0


def make_pseudopotential() -> None:
    """The demo calculation's pseudopotential, generated here by Quantum ESPRESSO's ld1.x."""
    if shutil.which("ld1.x") is None:
        print("ld1.x not installed: no demo pseudopotential")
        return
    PSEUDO_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        result = subprocess.run(
            ["ld1.x"],
            input=SI_LD1_INPUT.format(output=SI_PSEUDO),
            cwd=work,
            capture_output=True,
            text=True,
        )
        made = Path(work) / SI_PSEUDO
        if result.returncode != 0 or not made.is_file():
            print(result.stdout[-2000:], file=sys.stderr)
            raise SystemExit(f"ld1.x failed (exit code {result.returncode})")
        shutil.copyfile(made, PSEUDO_DIR / SI_PSEUDO)
    (PSEUDO_DIR / SI_PSEUDO).chmod(0o644)


def keep_rabbitmq_on_loopback() -> None:
    Path("/etc/rabbitmq").mkdir(exist_ok=True)
    Path("/etc/rabbitmq/rabbitmq-env.conf").write_text(RABBITMQ_ENV)
    Path("/etc/rabbitmq/advanced.config").write_text(RABBITMQ_ADVANCED)
    dropin = SYSTEMD / "epmd.socket.d"
    dropin.mkdir(parents=True, exist_ok=True)
    (dropin / "imageforge-loopback.conf").write_text(EPMD_SOCKET)


def write_kernel(venv: Path) -> None:
    """A Jupyter kernel with the AiiDA profile already loaded."""
    kernel = venv / "share" / "jupyter" / "kernels" / "aiida"
    kernel.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [
            str(venv / "bin" / "python"),
            "-m",
            "ipykernel_launcher",
            "-f",
            "{connection_file}",
            "--IPKernelApp.exec_lines=from aiida import load_profile; load_profile()",
        ],
        "display_name": "Python 3 (AiiDA)",
        "language": "python",
    }
    (kernel / "kernel.json").write_text(json.dumps(spec, indent=1) + "\n")


def login_environment(venv: Path) -> str:
    """/etc/profile.d text: the environment first on the PATH of login shells (SSH, console,
    `sudo -iu`), root's excepted, whose python3 stays Debian's. The profile is the default one,
    so verdi and the kernel use it with nothing more."""
    return f"""\
# imageforge quantum-mobile: AiiDA's Python environment (verdi, jupyter, python with aiida) for
# every login shell but root's.
if [ "$(id -u)" != 0 ]; then
    case ":$PATH:" in
        *:{venv}/bin:*) ;;
        *) PATH="{venv}/bin:$PATH"; export PATH ;;
    esac
fi
"""


def write_login_environment(venv: Path) -> None:
    LOGIN_ENV.write_text(login_environment(venv))
    LOGIN_ENV.chmod(0o644)
    BIN.mkdir(parents=True, exist_ok=True)
    for command in COMMANDS:
        link = BIN / command
        link.unlink(missing_ok=True)
        link.symlink_to(venv / "bin" / command)


def write_units(venv: Path, user: str, port: int) -> None:
    home = pwd.getpwnam(user).pw_dir
    units = {
        "imageforge-aiida.service": f"""\
[Unit]
Description=imageforge: this instance's AiiDA secrets and profile; PostgreSQL and RabbitMQ
After={AFTER_CLOUD_INIT} network-online.target imageforge-snakeoil.service
After=imageforge-cpu-check.service
Wants=network-online.target
ConditionPathExists=!{CPU_UNSUPPORTED}

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={SETUP} boot
StandardOutput=journal+console
TimeoutStartSec=30min

[Install]
WantedBy=multi-user.target
""",
        "aiida-daemon.service": f"""\
[Unit]
Description=The AiiDA daemon of {user}
After=imageforge-aiida.service postgresql.service rabbitmq-server.service
After=imageforge-cpu-check.service
Requires=imageforge-aiida.service
ConditionPathExists=!{CPU_UNSUPPORTED}

[Service]
Type=oneshot
RemainAfterExit=yes
User={user}
Environment=HOME={home} PATH={venv}/bin:/usr/local/bin:/usr/bin:/bin
ExecStart={venv}/bin/verdi daemon start 1
ExecStop={venv}/bin/verdi daemon stop
TimeoutStartSec=15min

[Install]
WantedBy=multi-user.target
""",
        "jupyterlab.service": f"""\
[Unit]
Description=JupyterLab of {user}, with the AiiDA kernel (token in ~/jupyter-token.txt)
After=imageforge-aiida.service imageforge-cpu-check.service
Requires=imageforge-aiida.service
ConditionPathExists=!{CPU_UNSUPPORTED}

[Service]
User={user}
WorkingDirectory={home}
Environment=HOME={home} PATH={venv}/bin:/usr/local/bin:/usr/bin:/bin
ExecStart={venv}/bin/jupyter lab --no-browser --ServerApp.ip=0.0.0.0 --ServerApp.port={port} \
--ServerApp.root_dir={home}
Restart=on-failure

[Install]
WantedBy=multi-user.target
""",
    }
    for name, text in units.items():
        (SYSTEMD / name).write_text(text)


# ---------------------------------------------------------------------------------------------
# At every boot, as root.


def boot() -> int:
    settings = json.loads(SETTINGS.read_text())
    user = pwd.getpwnam(settings["user"])
    home = Path(user.pw_dir)
    if not COOKIE.exists():
        shutil.rmtree("/var/lib/rabbitmq/mnesia", ignore_errors=True)  # the build VM's
        write_private(COOKIE, _random(20, string.ascii_uppercase), pwd.getpwnam("rabbitmq"))
        COOKIE.chmod(0o400)
    token = "" if (home / TOKEN_FILE).exists() else new_jupyter_token(user)
    # RabbitMQ (an Erlang VM, the slowest start here) comes up while the profile is made, which
    # needs only PostgreSQL: its start job is queued now, and aiida-daemon (After= it) waits.
    run(["systemctl", "start", "--no-block", "rabbitmq-server"])
    run(["systemctl", "start", "postgresql"])
    if not has_profile(home):
        if database_tables() > 0:
            say(
                f"the database {DATABASE} holds data but {home}/.aiida has no profile "
                f"{PROFILE}: both left as they are (nothing is dropped); restore the profile, "
                "or drop the database by hand to start afresh"
            )
            return 1
        make_profile(settings, user)
    if token:
        to_console(f"imageforge-secret: jupyter_token={token}")
    port = settings.get("jupyter_port", 8888)
    say(
        f"AiiDA profile {PROFILE} of {user.pw_name} is ready; JupyterLab on port {port}, "
        f"its token in {home}/{TOKEN_FILE}"
    )
    return 0


def new_jupyter_token(user: pwd.struct_passwd) -> str:
    """A token for JupyterLab, written (0600, the user's) where the user and the server read it."""
    token = secrets.token_hex(24)
    home = Path(user.pw_dir)
    (home / ".jupyter").mkdir(mode=0o700, exist_ok=True)
    os.chown(home / ".jupyter", user.pw_uid, user.pw_gid)
    config = {"IdentityProvider": {"token": token}}
    write_private(home / ".jupyter" / "jupyter_server_config.json", json.dumps(config), user)
    write_private(home / TOKEN_FILE, token + "\n", user)
    return token


def has_profile(home: Path) -> bool:
    try:
        config = json.loads((home / ".aiida" / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return PROFILE in config.get("profiles", {})


def database_tables() -> int:
    """How many tables the AiiDA database has: -1 when there is no such database (0: made by
    a first boot that stopped before the profile, holding nothing)."""
    psql = ["runuser", "-u", "postgres", "--", "psql", "-tAq"]
    query = f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"
    if run([*psql, "-c", query], capture_output=True).stdout.strip() != "1":
        return -1
    query = "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
    return int(run([*psql, "-d", DATABASE, "-c", query], capture_output=True).stdout.strip())


def make_profile(settings: dict, user: pwd.struct_passwd) -> None:
    """A database with this instance's own password, and a new AiiDA profile using it; only
    where neither exists (boot checks), so nothing is ever dropped."""
    password = secrets.token_urlsafe(24)  # letters, digits, - and _: safe in an SQL literal
    # A first boot that stopped half-way may have left the role, or an empty database: reused.
    sql = (
        "DO $$ BEGIN\n"
        f"IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{DATABASE}') THEN\n"
        f"  ALTER ROLE {DATABASE} LOGIN PASSWORD '{password}';\n"
        f"ELSE CREATE ROLE {DATABASE} LOGIN PASSWORD '{password}'; END IF; END $$;\n"
    )
    if database_tables() < 0:
        sql += f"CREATE DATABASE {DATABASE} OWNER {DATABASE} ENCODING 'UTF8' TEMPLATE template0;\n"
    run(["runuser", "-u", "postgres", "--", "psql", "-q", "-v", "ON_ERROR_STOP=1"], input=sql)
    request = {
        "password": password,
        "email": f"{user.pw_name}@quantum-mobile",
        "codes": settings.get("codes", []),
    }
    python = str(Path(settings["venv"]) / "bin" / "python")
    runuser = ["runuser", "-u", user.pw_name, "--", "env", f"HOME={user.pw_dir}"]
    run([*runuser, python, str(SETUP), "profile"], input=json.dumps(request))


# ---------------------------------------------------------------------------------------------
# As the image user, with the environment's Python (AiiDA importable).


def profile() -> int:
    request = json.load(sys.stdin)
    from aiida.manage.configuration import create_profile, get_config, load_profile
    from aiida.orm import Computer, InstalledCode

    config = get_config(create=True)
    home = Path.home()
    created = create_profile(
        config,
        name=PROFILE,
        email=request["email"],
        first_name="Quantum",
        last_name="Mobile",
        institution="imageforge",
        storage_backend="core.psql_dos",
        storage_config={
            "database_engine": "postgresql_psycopg",
            "database_hostname": "localhost",
            "database_port": 5432,
            "database_name": DATABASE,
            "database_username": DATABASE,
            "database_password": request["password"],
            "repository_uri": (home / ".aiida" / "repository" / PROFILE).as_uri(),
        },
        broker_backend="core.rabbitmq",
        broker_config={
            "broker_protocol": "amqp",
            "broker_username": "guest",
            "broker_password": "guest",
            "broker_host": "127.0.0.1",
            "broker_port": 5672,
            "broker_virtual_host": "",
        },
    )
    config.set_option("runner.poll.interval", 1, scope=created.name)
    # RabbitMQ is configured as AiiDA needs (RABBITMQ_ADVANCED); AiiDA, which checks only the
    # version, would otherwise warn on every verdi command. Global: every profile uses this broker.
    config.set_option("warnings.rabbitmq_version", False)
    config.set_default_profile(created.name, overwrite=True)
    config.store()
    load_profile(created.name, allow_switch=True)
    computer = Computer(
        label="localhost",
        hostname="localhost",
        description="This machine",
        transport_type="core.local",
        scheduler_type="core.direct",
        workdir=str(home / "aiida_run"),
    ).store()
    computer.configure(safe_interval=0)
    computer.set_minimum_job_poll_interval(1)
    computer.set_default_mpiprocs_per_machine(1)
    for code in request["codes"]:
        InstalledCode(
            computer=computer,
            filepath_executable=code["executable"],
            label=code["label"],
            default_calc_job_plugin=code["plugin"],
        ).store()
    labels = ", ".join(code["label"] for code in request["codes"])
    print(f"profile {created.name}: computer localhost, codes {labels}")
    return 0


def _random(length: int, alphabet: str) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


if __name__ == "__main__":
    role = sys.argv[1] if len(sys.argv) > 1 else "build"
    sys.exit({"build": build, "boot": boot, "profile": profile}[role]())
