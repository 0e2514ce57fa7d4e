"""Real Keystone and Glance (from PyPI: `pip install keystone glance`) on sqlite, on 127.0.0.1.

`running()` sets both up in a fresh temporary directory and removes it afterwards:

- Keystone: keystone.conf (sqlite, fernet and credential key repositories in the directory),
  `keystone-manage db_sync`, `fernet_setup`, `credential_setup` and `bootstrap` (admin user and
  project, RegionOne, identity endpoint), then its WSGI app (`keystone.wsgi.api`) under
  werkzeug's threaded server: keystone ships no `keystone-wsgi-public` script any more;
- Glance: glance-api.conf (sqlite, keystone_authtoken pointing at that Keystone, a file store
  in the directory), `glance-manage db_sync`, then `glance.wsgi.api` under werkzeug: the
  `glance-api` script only says "Standalone glance-api is no longer supported";
- through the Keystone API: the image service and its endpoints, a `service` project with the
  `glance` user, and three projects with one member user each: `builder` (the pipeline),
  `consumer` (shares are made to it) and `outsider` (sees nothing of builder's);
- a clouds.yaml with the entries `admin`, `builder`, `consumer` and `outsider`.

Every process starts through imageforge.process.runner.spawn (its own session) and its whole process
group is killed on the way out. Glance runs with `image_member_quota = MEMBER_QUOTA`, so a
share with more projects gets a real per-member refusal (413).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import requests

from imageforge.errors import ImageforgeError
from imageforge.process import runner

HOST = "127.0.0.1"
REGION = "RegionOne"
MEMBER_QUOTA = 3
USERS = {"builder": "builder-pw", "consumer": "consumer-pw", "outsider": "outsider-pw"}
ADMIN_PASSWORD = "admin-pw"
GLANCE_PASSWORD = "glance-pw"
WSGI_SERVER = """
import os, sys
from werkzeug.serving import run_simple
module, port = sys.argv[1], int(sys.argv[2])
sys.argv = sys.argv[:1]  # oslo.config reads the command line
app = __import__(module, fromlist=["application"]).application
run_simple("127.0.0.1", port, app, threaded=True)
"""
MANAGE = "import sys; from {module} import main; sys.argv[0] = {name!r}; sys.exit(main())"


@dataclass
class Services:
    """Where the services listen, the clouds.yaml for them, and their project ids."""

    root: Path
    keystone_url: str
    glance_url: str
    clouds_yaml: Path
    projects: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def manage(tool: str, module: str, config: Path, *args: str) -> list[str]:
    """A keystone-manage/glance-manage command line, run with this interpreter."""
    code = MANAGE.format(module=module, name=tool)
    return [sys.executable, "-W", "ignore", "-c", code, "--config-file", str(config), *args]


def run_parallel(commands: dict[str, Sequence[str]], logs: Path) -> None:
    """Run independent setup commands at once; fail with the log tail of any that fails."""
    with contextlib.ExitStack() as stack:
        procs = {
            name: stack.enter_context(runner.spawn(argv, logfile=logs / f"{name}.log"))
            for name, argv in commands.items()
        }
        for name, proc in procs.items():
            if proc.wait(timeout=300) != 0:
                tail = (logs / f"{name}.log").read_text(errors="replace").splitlines()[-20:]
                raise ImageforgeError(f"{name} failed:\n" + "\n".join(tail))


def wait_http(url: str, ok: int, proc: object, log: Path, timeout: float = 120) -> None:
    """Poll url until it answers `ok`; fail early with the log when the server died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:  # type: ignore[attr-defined]
            raise ImageforgeError(
                f"{url} server exited:\n{log.read_text(errors='replace')[-3000:]}"
            )
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=5, allow_redirects=False).status_code == ok:
                return
        time.sleep(0.2)
    raise ImageforgeError(f"{url} did not answer {ok} within {timeout}s")


def keystone_conf(root: Path) -> Path:
    path = root / "keystone" / "keystone.conf"
    path.parent.mkdir()
    path.write_text(
        f"[DEFAULT]\nlog_file = {root / 'logs' / 'keystone-server.log'}\n"
        f"[database]\nconnection = sqlite:///{root / 'keystone' / 'keystone.db'}\n"
        f"[fernet_tokens]\nkey_repository = {root / 'keystone' / 'fernet-keys'}\n"
        f"[fernet_receipts]\nkey_repository = {root / 'keystone' / 'fernet-receipts'}\n"
        f"[credential]\nkey_repository = {root / 'keystone' / 'credential-keys'}\n"
        "[token]\nprovider = fernet\n"
        "[identity]\npassword_hash_rounds = 4\n"  # bcrypt's minimum: fast logins in tests
        f"[oslo_concurrency]\nlock_path = {root / 'locks'}\n"
        "[cache]\nenabled = true\nbackend = oslo_cache.dict\n"
    )
    return path


def glance_conf(root: Path, keystone_url: str, glance_port: int) -> Path:
    directory = root / "glance"
    for sub in ("images", "staging", "tasks", "cache"):
        (directory / sub).mkdir(parents=True)
    shutil.copy(paste_ini(), directory / "glance-api-paste.ini")
    path = directory / "glance-api.conf"
    path.write_text(
        "[DEFAULT]\n"
        f"log_file = {root / 'logs' / 'glance-server.log'}\n"
        "enabled_backends = local:file\n"
        f"worker_self_reference_url = http://{HOST}:{glance_port}\n"
        f"image_member_quota = {MEMBER_QUOTA}\n"
        f"image_cache_dir = {directory / 'cache'}\n"
        f"[database]\nconnection = sqlite:///{directory / 'glance.db'}\n"
        "[paste_deploy]\nflavor = keystone\n"
        "[keystone_authtoken]\n"
        f"www_authenticate_uri = {keystone_url}\n"
        f"auth_url = {keystone_url}\n"
        "auth_type = password\n"
        "interface = public\n"
        f"username = glance\npassword = {GLANCE_PASSWORD}\nproject_name = service\n"
        "user_domain_name = Default\nproject_domain_name = Default\n"
        "[glance_store]\ndefault_backend = local\n"
        f"[local]\nfilesystem_store_datadir = {directory / 'images'}\n"
        f"[os_glance_staging_store]\nfilesystem_store_datadir = {directory / 'staging'}\n"
        f"[os_glance_tasks_store]\nfilesystem_store_datadir = {directory / 'tasks'}\n"
        f"[oslo_concurrency]\nlock_path = {root / 'locks'}\n"
    )
    return path


def paste_ini() -> Path:
    """glance-api-paste.ini as the glance wheel installs it (<prefix>/etc/glance)."""
    for prefix in (sys.prefix, sys.base_prefix, "/usr/local", "/usr"):
        candidate = Path(prefix) / "etc" / "glance" / "glance-api-paste.ini"
        if candidate.is_file():
            return candidate
    raise ImageforgeError(
        "glance-api-paste.ini not found: is glance installed (pip install glance)?"
    )


def clouds_yaml(root: Path, keystone_url: str) -> Path:
    entries = {"admin": ("admin", ADMIN_PASSWORD, "admin")}
    entries.update({name: (name, password, name) for name, password in USERS.items()})
    lines = ["clouds:"]
    for cloud, (user, password, project) in entries.items():
        lines += [
            f"  {cloud}:",
            "    auth:",
            f"      auth_url: {keystone_url}",
            f"      username: {user}",
            f"      password: {password}",
            f"      project_name: {project}",
            "      user_domain_name: Default",
            "      project_domain_name: Default",
            f"    region_name: {REGION}",
            "    identity_api_version: 3",
        ]
    path = root / "clouds.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def register(services: Services, glance_url: str) -> None:
    """The image service, the glance service user, and the three test projects with users."""
    import openstack.config
    import openstack.connection

    loader = openstack.config.OpenStackConfig(config_files=[str(services.clouds_yaml)])
    admin = openstack.connection.Connection(config=loader.get_one(cloud="admin"))
    identity = admin.identity
    service = identity.create_service(name="glance", type="image")
    for interface in ("public", "internal"):
        identity.create_endpoint(
            service_id=service.id, interface=interface, url=glance_url, region_id=REGION
        )
    roles = {r.name: r for r in identity.roles()}
    glance_project = identity.create_project(name="service", domain_id="default")
    glance_user = identity.create_user(name="glance", password=GLANCE_PASSWORD, domain_id="default")
    identity.assign_project_role_to_user(glance_project, glance_user, roles["admin"])
    for name, password in USERS.items():
        project = identity.create_project(name=name, domain_id="default")
        user = identity.create_user(name=name, password=password, domain_id="default")
        identity.assign_project_role_to_user(project, user, roles["member"])
        services.projects[name] = project.id
    services.projects["admin"] = admin.current_project_id
    admin.close()


@contextlib.contextmanager
def running() -> Iterator[Services]:
    """Keystone and Glance, up and registered; everything stopped and removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="imageforge-openstack-"))
    try:
        with _services(root) as services:
            yield services
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def _services(root: Path) -> Iterator[Services]:
    """Set up databases and keys, then bootstrap while both servers import and start."""
    logs, started = root / "logs", time.monotonic()
    (root / "locks").mkdir()
    keystone_port, glance_port = free_port(), free_port()
    keystone_url = f"http://{HOST}:{keystone_port}/v3"
    glance_url = f"http://{HOST}:{glance_port}"
    kconf = keystone_conf(root)
    gconf = glance_conf(root, keystone_url, glance_port)
    keystone = ("keystone-manage", "keystone.cmd.manage", kconf)
    owner = ("--keystone-user", "root", "--keystone-group", "root")
    run_parallel(
        {
            "keystone-db-sync": manage(*keystone, "db_sync"),
            "keystone-fernet-setup": manage(*keystone, "fernet_setup", *owner),
            "keystone-credential-setup": manage(*keystone, "credential_setup", *owner),
            "glance-db-sync": manage("glance-manage", "glance.cmd.manage", gconf, "db_sync"),
        },
        logs,
    )
    services = Services(root, keystone_url, glance_url, clouds_yaml(root, keystone_url))
    services.seconds["db_sync"] = time.monotonic() - started
    server = [sys.executable, "-W", "ignore", "-c", WSGI_SERVER]
    keystone_log, glance_log = logs / "keystone-wsgi.log", logs / "glance-wsgi.log"
    bootstrap = ("--bootstrap-password", ADMIN_PASSWORD, "--bootstrap-region-id", REGION)
    with (
        runner.spawn(
            [*server, "keystone.wsgi.api", str(keystone_port)],
            logfile=keystone_log,
            env={"OS_KEYSTONE_CONFIG_FILES": str(kconf)},
        ) as keystone_proc,
        runner.spawn(
            [*server, "glance.wsgi.api", str(glance_port)],
            logfile=glance_log,
            env={"OS_GLANCE_CONFIG_DIR": str(gconf.parent)},
        ) as glance_proc,
    ):
        run_parallel(
            {
                "keystone-bootstrap": manage(
                    *keystone, "bootstrap", *bootstrap, "--bootstrap-public-url", keystone_url
                )
            },
            logs,
        )
        services.seconds["bootstrap"] = time.monotonic() - started
        wait_http(keystone_url, 200, keystone_proc, keystone_log)
        services.seconds["keystone"] = time.monotonic() - started
        register(services, glance_url)
        wait_http(f"{glance_url}/", 300, glance_proc, glance_log)
        services.seconds["glance"] = time.monotonic() - started
        yield services
