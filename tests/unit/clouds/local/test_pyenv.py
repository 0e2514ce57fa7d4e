"""A flavor's Python environment: validated in images.yml, installed from host-made wheels."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from imageforge import config
from imageforge.clouds.local import pyenv
from imageforge.config import matrix
from imageforge.errors import ConfigError, ImageforgeError
from imageforge.stages import render

from ...conftest import ROOT, write


def test_hooks_install_offline_from_the_wheels(tmp_path: Path) -> None:
    hooks = pyenv.mmdebstrap_options(
        "/opt/qm/venv", ("aiida-core~=2.9", "x>1; python_version>'3'"), tmp_path
    )
    commands = [h.removeprefix("--customize-hook=") for h in hooks]
    assert commands[1] == f"sync-in {tmp_path} {pyenv.WHEELS_IN_TREE}"
    assert commands[2] == f'chroot "$1" {pyenv.CLEAN_ENV} python3 -m venv /opt/qm/venv'
    install = commands[3]
    assert install.startswith(f'chroot "$1" {pyenv.CLEAN_ENV} ')  # no PIP_* of the host
    assert "--no-index" in install and f"--find-links {pyenv.WHEELS_IN_TREE}" in install
    # Every requirement reaches pip as one word, whatever it contains.
    words = shlex.split(install)
    assert words[-2:] == ["aiida-core~=2.9", "x>1; python_version>'3'"]
    assert commands[4] == f'rm -rf "$1{pyenv.WHEELS_IN_TREE}"'


def test_installed_versions_are_read_from_the_tree(tmp_path: Path) -> None:
    site = tmp_path / "opt/venv/lib/python3.11/site-packages"
    for name, version in (("aiida_core", "2.9.4"), ("Jupyterlab", "4.6.6")):
        info = site / f"{name}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n"
        )
    assert pyenv.installed(tmp_path, "/opt/venv") == {"aiida-core": "2.9.4", "jupyterlab": "4.6.6"}


def test_wheels_are_chosen_for_the_suites_python(tmp_path: Path, monkeypatch) -> None:
    seen: list[list[str]] = []
    monkeypatch.setattr(pyenv.runner, "run", lambda argv, **kwargs: seen.append(argv))
    pyenv.make_wheels("bookworm", ("aiida-core~=2.9",), tmp_path, tmp_path / "log")
    [argv] = seen
    assert argv[argv.index("--python-version") + 1] == "3.11.2"  # Debian 12's, not the host's
    assert "--only-binary=:all:" in argv and argv[-1] == "aiida-core~=2.9"
    pyenv.make_wheels("trixie", ("x",), tmp_path, tmp_path / "log")
    assert seen[-1][seen[-1].index("--python-version") + 1] == "3.13.5"  # Debian 13's
    with pytest.raises(ImageforgeError, match="no Python version is known"):
        pyenv.make_wheels("sid", ("x",), tmp_path, tmp_path / "log")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "python:\n      packages: ['aiida-core~=']\n",
            "images.yml:4:18: flavors.a.python.packages[0]: not a pip requirement",
        ),
        (
            "python:\n      packages: ['x @ https://example.org/x.whl']\n",
            "a requirement from a URL is not allowed",
        ),
        (
            "python:\n      venv: opt/venv\n      packages: [x]\n",
            "flavors.a.python.venv: must match",
        ),
        ("python: {packages: []}\n", "flavors.a.python.packages: needs at least one entry"),
        (
            "python: {packages: [aiida-core]}\n    aiida: {jupyter_port: 9999}\n",
            "flavors.a.aiida.jupyter_port: port 9999 is not among the flavor's ports [22]",
        ),
        ("aiida: {}\n", "flavors.a.aiida: AiiDA needs a Python environment"),
    ],
)
def test_bad_python_settings_are_located(scratch: Path, text: str, expected: str) -> None:
    write(scratch, "flavors:\n  a:\n    " + text)
    with pytest.raises(ConfigError) as caught:
        config.load("images.yml")
    assert expected in str(caught.value)
    assert caught.value.exit_code == 2


def test_cloud_builds_make_the_venv_in_the_vm() -> None:
    project = config.load(ROOT / "images.yml")
    cell = matrix.find(project, "quantum-mobile", "aws")
    commands = render.package_commands(cell)
    assert "python3 -m venv /opt/quantum-mobile/venv" in commands
    pip = next(c for c in commands if "/bin/pip install" in c)
    assert "'aiida-core~=2.9'" in pip
    env = render._env(cell, cell.flavor.provisioners[1])
    assert "IMAGEFORGE_VENV=/opt/quantum-mobile/venv" in env
    assert any(str(e).startswith("IMAGEFORGE_AIIDA=") for e in env)


def test_cloud_builds_compile_python_build_and_remove_the_compiler() -> None:
    project = config.load(ROOT / "images.yml")
    cell = matrix.find(project, "quantum-mobile", "gcp")
    assert cell.flavor.python is not None and cell.flavor.python.build
    commands = render.package_commands(cell)
    compilers = "apt-get install -y -q --no-install-recommends python3-dev gcc libc6-dev"
    pip = next(i for i, c in enumerate(commands) if "/bin/pip install" in c)
    assert commands.index(compilers) < pip
    # Marked as automatically installed and removed: the image keeps no compiler.
    assert commands[pip + 1 :] == [
        "apt-mark auto -q python3-dev gcc libc6-dev",
        "apt-get autoremove -y -q",
    ]


def test_no_compiler_without_python_build(scratch: Path) -> None:
    write(scratch, "flavors:\n  a:\n    python: {packages: [x]}\n")
    cell = matrix.find(config.load("images.yml"), "a", "aws")
    assert not [c for c in render.package_commands(cell) if "gcc" in c or "autoremove" in c]
