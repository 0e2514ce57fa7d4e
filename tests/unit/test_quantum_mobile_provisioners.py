"""quantum-mobile's boot-time CPU check (provisioners/quantum-mobile/25-cpu-check.py) and the
parts of its AiiDA provisioner (20-aiida.py) that can be checked without a VM."""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

from imageforge.process import qemu

ROOT = Path(__file__).resolve().parents[2]
QM = ROOT / "provisioners" / "quantum-mobile"


def load(name: str) -> ModuleType:
    path = QM / name
    spec = importlib.util.spec_from_file_location(path.stem.replace("-", "_"), path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cpu = load("25-cpu-check.py")
aiida = load("20-aiida.py")

# Flags as a Linux guest shows them: QEMU's default qemu64 model, and a modern host CPU.
QEMU64 = (
    "fpu de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse "
    "sse2 syscall nx lm rep_good nopl xtopology cpuid tsc_known_freq pni cx16 x2apic hypervisor "
    "lahf_lm cpuid_fault pti"
)
MODERN = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse "
    "sse2 ht syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl pni pclmulqdq ssse3 fma cx16 "
    "pcid sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm abm avx2"
)

TCG_GUEST = (
    "fpu de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse "
    "sse2 ht syscall nx lm rep_good nopl xtopology cpuid extd_apicid pni ssse3 cx16 sse4_1 "
    "sse4_2 popcnt hypervisor lahf_lm cmp_legacy svm 3dnowprefetch vmmcall"
)


def cpuinfo(*flag_lines: str) -> str:
    """A /proc/cpuinfo with one processor block per flags line."""
    return "\n".join(
        f"processor\t: {n}\nvendor_id\t: GenuineIntel\nmodel name\t: QEMU Virtual CPU\n"
        f"flags\t\t: {flags}\nbugs\t\t: spectre_v1\n"
        for n, flags in enumerate(flag_lines)
    )


def test_qemu64_lacks_what_numpy_needs() -> None:
    assert cpu.missing_features(cpuinfo(QEMU64)) == ["popcnt", "sse4_1", "sse4_2", "ssse3"]


def test_the_cpu_imageforge_gives_a_tcg_guest_is_x86_64_v2() -> None:
    """qemu.TCG_CPU adds to qemu64 exactly what numpy needs; the flags line is the one a
    trixie guest showed under `-cpu {TCG_CPU}`."""
    added = [f.removeprefix("+").replace(".", "_") for f in qemu.TCG_CPU.split(",")[1:]]
    assert qemu.TCG_CPU.split(",")[0] == "qemu64"
    flags = QEMU64 + " " + " ".join(added)
    assert cpu.missing_features(cpuinfo(flags, flags)) == []
    assert cpu.missing_features(cpuinfo(TCG_GUEST)) == []


def test_a_modern_cpu_has_every_x86_64_v2_feature() -> None:
    assert cpu.missing_features(cpuinfo(MODERN, MODERN)) == []


def test_a_feature_one_processor_lacks_is_missing() -> None:
    assert cpu.missing_features(cpuinfo(MODERN, MODERN.replace(" popcnt", ""))) == ["popcnt"]


def test_no_flags_line_is_not_reported_as_missing_features() -> None:
    # e.g. an arm64 guest, whose /proc/cpuinfo lists "Features", not "flags"
    assert cpu.missing_features("processor\t: 0\nFeatures\t: fp asimd evtstrm\n") == []
    # "flags" must be the whole key ("vmx flags" is another line of recent kernels)
    assert cpu.missing_features(cpuinfo(MODERN) + "vmx flags\t: vnmi\n") == []


def test_every_x86_64_v2_feature_is_checked() -> None:
    assert set(cpu.X86_64_V2) == {"cx16", "lahf_lm", "pni", "popcnt", "sse4_1", "sse4_2", "ssse3"}
    assert cpu.missing_features(cpuinfo("fpu sse sse2")) == list(cpu.X86_64_V2)


def test_boot_says_it_once_on_the_console_and_in_motd(tmp_path: Path, capsys) -> None:
    info, motd, marker = tmp_path / "cpuinfo", tmp_path / "motd.d/40-cpu", tmp_path / "if/cpu"
    info.write_text(cpuinfo(QEMU64, QEMU64))
    assert cpu.boot(info, motd, marker) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("imageforge-cpu: ")
    assert "popcnt sse4_1 sse4_2 ssse3" in out and "x86-64-v2" in out
    assert motd.read_text() == out
    assert marker.read_text() == "popcnt sse4_1 sse4_2 ssse3\n"


def test_boot_on_a_good_cpu_is_silent_and_clears_stale_notes(tmp_path: Path, capsys) -> None:
    info, motd, marker = tmp_path / "cpuinfo", tmp_path / "40-cpu", tmp_path / "cpu"
    info.write_text(cpuinfo(MODERN))
    motd.write_text("old\n")
    marker.write_text("old\n")
    assert cpu.boot(info, motd, marker) == 0
    assert capsys.readouterr().out == ""
    assert not motd.exists() and not marker.exists()


def test_boot_without_cpuinfo_does_not_fail(tmp_path: Path, capsys) -> None:
    assert cpu.boot(tmp_path / "none", tmp_path / "motd", tmp_path / "marker") == 0
    assert "cannot read" in capsys.readouterr().out
    assert not (tmp_path / "marker").exists()


def test_check_runs_before_logins_and_the_aiida_units() -> None:
    unit = cpu.UNIT_TEXT
    assert f"ExecStart={cpu.SETUP} boot" in unit
    assert "StandardOutput=journal+console" in unit
    for name in ("imageforge-aiida", "aiida-daemon", "jupyterlab", "systemd-user-sessions"):
        assert f"{name}.service" in unit


def test_provisioner_installs_and_enables_the_check(tmp_path, monkeypatch, capsys) -> None:
    calls = []
    monkeypatch.setattr(cpu, "SETUP", tmp_path / "imageforge-cpu-check")
    monkeypatch.setattr(cpu, "UNIT", tmp_path / "imageforge-cpu-check.service")
    monkeypatch.setattr(cpu, "CPUINFO", tmp_path / "cpuinfo")
    monkeypatch.setattr(cpu.subprocess, "run", lambda argv, **kw: calls.append(argv))
    (tmp_path / "cpuinfo").write_text(cpuinfo(QEMU64))
    assert cpu.build() == 0
    assert (tmp_path / "imageforge-cpu-check").read_text() == (QM / "25-cpu-check.py").read_text()
    assert (tmp_path / "imageforge-cpu-check").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "imageforge-cpu-check.service").read_text() == cpu.UNIT_TEXT
    assert calls == [
        ["systemctl", "enable", "--no-reload", "--quiet", "imageforge-cpu-check.service"]
    ]
    # the build VM's CPU is only reported: nothing is written for the image's instances
    assert "lacks popcnt sse4_1 sse4_2 ssse3" in capsys.readouterr().out


@pytest.fixture
def units(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The AiiDA provisioner's units, written for a fake user into tmp_path."""
    monkeypatch.setattr(aiida, "SYSTEMD", tmp_path)
    fake = SimpleNamespace(getpwnam=lambda user: SimpleNamespace(pw_dir=f"/home/{user}"))
    monkeypatch.setattr(aiida, "pwd", fake)
    aiida.write_units(Path("/opt/qm/venv"), "max", 8888)
    return {path.name: path.read_text() for path in tmp_path.iterdir()}


def test_aiida_units_are_skipped_on_a_cpu_the_check_refused(units) -> None:
    assert str(cpu.CPU_UNSUPPORTED) == aiida.CPU_UNSUPPORTED
    assert set(units) == {"imageforge-aiida.service", "aiida-daemon.service", "jupyterlab.service"}
    for text in units.values():
        assert f"ConditionPathExists=!{cpu.CPU_UNSUPPORTED}\n" in text
        assert "imageforge-cpu-check.service" in text


def test_first_boot_unit_runs_after_cloud_init_on_debian_12_and_13(units) -> None:
    after = " ".join(
        line.removeprefix("After=")
        for line in units["imageforge-aiida.service"].splitlines()
        if line.startswith("After=")
    ).split()
    assert {"cloud-init.service", "cloud-init-network.service"} <= set(after)


def test_no_postgresql_version_is_written_into_the_provisioner() -> None:
    text = (QM / "20-aiida.py").read_text()
    for versioned in ("/etc/postgresql/1", "/usr/lib/postgresql/1", "postgresql@1"):
        assert versioned not in text


def login_path(tmp_path: Path, uid: int, path: str) -> str:
    """PATH after a login shell sources the profile.d snippet (twice), as user id uid."""
    snippet = tmp_path / "qm.sh"
    snippet.write_text(aiida.login_environment(Path("/opt/qm/venv")))
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir(exist_ok=True)
    (fake_bin / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    (fake_bin / "id").chmod(0o755)
    script = f'PATH="{fake_bin}:$PATH"; . {snippet}; . {snippet}; echo "$PATH"'
    env = {"PATH": path, "HOME": str(tmp_path)}
    result = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().replace(f"{fake_bin}:", "")


def test_login_shells_of_users_get_the_environment_first_once(tmp_path: Path) -> None:
    path = login_path(tmp_path, 1000, "/usr/local/bin:/usr/bin:/bin")
    assert path == "/opt/qm/venv/bin:/usr/local/bin:/usr/bin:/bin"


def test_root_login_shells_keep_debians_python(tmp_path: Path) -> None:
    assert login_path(tmp_path, 0, "/usr/sbin:/usr/bin") == "/usr/sbin:/usr/bin"


def test_verdi_and_jupyter_are_linked_for_shells_without_login(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(aiida, "LOGIN_ENV", tmp_path / "profile.d" / "qm.sh")
    monkeypatch.setattr(aiida, "BIN", tmp_path / "bin")
    (tmp_path / "profile.d").mkdir()
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "verdi").write_text("stale")  # replaced, not an error
    aiida.write_login_environment(Path("/opt/qm/venv"))
    for command in ("verdi", "jupyter"):
        assert os.readlink(tmp_path / "bin" / command) == f"/opt/qm/venv/bin/{command}"
    assert (tmp_path / "profile.d" / "qm.sh").stat().st_mode & 0o777 == 0o644


def test_a_profile_is_found_only_where_the_config_names_it(tmp_path: Path) -> None:
    aiida_dir = tmp_path / ".aiida"
    assert not aiida.has_profile(tmp_path)  # a new instance: none
    aiida_dir.mkdir()
    (aiida_dir / "config.json").write_text("{not json")
    assert not aiida.has_profile(tmp_path)
    (aiida_dir / "config.json").write_text('{"profiles": {"other": {}}}')
    assert not aiida.has_profile(tmp_path)
    (aiida_dir / "config.json").write_text(f'{{"profiles": {{"{aiida.PROFILE}": {{}}}}}}')
    assert aiida.has_profile(tmp_path)  # a relaunch: kept


def test_nothing_at_boot_drops_or_deletes_user_data() -> None:
    """A relaunched copy keeps its database and ~/.aiida: the boot path has no DROP and no
    removal of the user's files (the build VM's RabbitMQ database aside, before the cookie)."""
    text = (QM / "20-aiida.py").read_text()
    boot_path = text[text.index("def boot()") : text.index("def profile()")]
    assert "DROP " not in boot_path
    assert "rmtree" not in boot_path.replace(
        'shutil.rmtree("/var/lib/rabbitmq/mnesia", ignore_errors=True)  # the build VM\'s', ""
    )
    assert "instance-id" not in text  # made once where absent, not per instance id
