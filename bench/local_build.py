"""Benchmark of the local loop, Debian 12 and Debian 13 side by side, measured in one run.

    python3 bench/local_build.py [--os debian-12,debian-13] [--warm quantum-mobile] [--out FILE]

For each OS, in a fresh cache of its own (a temporary IMAGEFORGE_CACHE_DIR, nothing shared with
the user's cache or with the other OS):
1. cold slurm-node: `invoke build` from an empty cache (layer, packer build, verification);
2. no-op rebuild: the same command again;
3. warm slurm-node build + verify: `invoke build --force` (layer cached);
4. raw `packer build` of the same rendered template, with the same variables (the baseline).
Then, on the newest OS, a first and a warm build + verify of each flavor named in --warm.
Prints a table and the ratios (each OS's own, and the newest over the oldest), and writes them
as JSON (default bench/results/local_build.json). This machine is noisy: compare the ratios of
one run, not absolute times across runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from integration.conftest import copy_project  # noqa: E402

from imageforge import packer  # noqa: E402
from imageforge.clouds.local import seed_user_data  # noqa: E402
from imageforge.process import buildsecrets, qemu  # noqa: E402

FLAVORS = ("slurm-node", "training-desktop", "quantum-mobile")


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.monotonic()
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(argv)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return round(time.monotonic() - start, 1)


def build(project: Path, env: dict[str, str], flavor: str, *extra: str) -> dict[str, Any]:
    argv = [sys.executable, "-m", "invoke", "build", "--image", flavor, *extra]
    seconds = timed(argv, project, env)
    newest = sorted((project / "artifacts" / flavor).glob("*/build.json"))[-1]
    record = json.loads(newest.read_text())
    boot = record.get("verification", {}).get("boot", {})
    return {
        "seconds": seconds,
        "build_id": record["id"],
        "stages": record["timings"],
        "packer_boot_to_ssh": record.get("boot", {}).get("packer_to_ssh_seconds"),
        "verify_boot": boot,
        "checks": record.get("verification", {}).get("passed"),
        "packages": len(record.get("packages", {})),
        "layer": {
            "seconds": record["timings"]["base"],
            "downloaded": record["base_image"].get("downloaded"),
            "packages": len(record.get("packages", {})),
        },
    }


def raw_packer(project: Path, env: dict[str, str], build_id: str, tmp: Path) -> float:
    """`packer build` of the rendered slurm-node template, with the variables imageforge sets."""
    record = json.loads((project / "artifacts/slurm-node" / build_id / "build.json").read_text())
    key = buildsecrets.ssh_keypair(tmp / "ssh", "imageforge-bench")
    seed = qemu.make_seed(
        tmp / "seed.iso",
        user_data=seed_user_data(key.public),
        meta_data="instance-id: imageforge-bench\nlocal-hostname: debian\n",
    )
    (tmp / "host").mkdir()
    out = tmp / "raw-packer-artifacts"
    variables = {
        "artifact_dir": out,
        "ssh_private_key_file": key.private,
        "host_files_dir": tmp / "host",
        "base_image": record["base_image"]["path"],
        "base_image_checksum": f"sha256:{record['base_image']['sha256']}",
        "accelerator": record["accelerator"],
        "seed_iso": seed,
    }
    packer_env = {**env, "CHECKPOINT_DISABLE": "1", "PACKER_CACHE_DIR": str(tmp / "pc")}
    packer_env.update({f"PKR_VAR_{k}": str(v) for k, v in variables.items()})
    rendered = project / "artifacts/slurm-node" / build_id / "packer"  # each build's own render
    return timed([packer.binary(), "build", "-color=false", str(rendered)], project, packer_env)


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": round(memory_kib / 2**20, 1),
        "kernel": platform.release(),
        "accelerator": qemu.probe_accelerator("auto"),
        "qemu": qemu.qemu_version(),
        "packer": str(packer.installed_version()),
        "python": platform.python_version(),
    }


def with_os(images_yml: str, os_name: str) -> str:
    """images.yml with every flavor built locally on os_name."""
    lines = []
    for line in images_yml.splitlines(keepends=True):
        lines.append(line)
        if line.rstrip() in {f"  {flavor}:" for flavor in FLAVORS}:
            lines.append(f"    os: {{local: {os_name}}}\n")
    return "".join(lines)


def one_os(tmp: Path, os_name: str, cold_only: bool = False) -> dict[str, Any]:
    """Cold, no-op, warm and raw-Packer slurm-node builds on os_name, in caches of its own."""
    env = {**os.environ, "IMAGEFORGE_CACHE_DIR": str(tmp / os_name / "cache")}
    project = copy_project(tmp / os_name / "project")
    images = project / "images.yml"
    images.write_text(with_os(images.read_text(), os_name))
    result: dict[str, Any] = {}
    print(f"[{os_name}] cold slurm-node build + verify (empty cache) ...", flush=True)
    result["cold_slurm_node"] = build(project, env, "slurm-node")
    if cold_only:
        result["project"], result["env"], result["ratios"] = project, env, {}
        return result
    print(f"[{os_name}] no-op rebuild ...", flush=True)
    argv = [sys.executable, "-m", "invoke", "build", "--image", "slurm-node"]
    result["noop_rebuild_seconds"] = timed(argv, project, env)
    print(f"[{os_name}] warm slurm-node build + verify ...", flush=True)
    result["warm_slurm_node"] = build(project, env, "slurm-node", "--force")
    print(f"[{os_name}] raw packer build of the same template ...", flush=True)
    build_id = result["warm_slurm_node"]["build_id"]
    result["raw_packer_build_seconds"] = raw_packer(project, env, build_id, tmp / os_name / "raw")
    result["ratios"] = {
        "warm_build_verify_over_raw_packer_build": round(
            result["warm_slurm_node"]["seconds"] / result["raw_packer_build_seconds"], 2
        ),
        "cold_over_warm_slurm_node": round(
            result["cold_slurm_node"]["seconds"] / result["warm_slurm_node"]["seconds"], 2
        ),
    }
    result["project"], result["env"] = project, env
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--os", default="debian-12,debian-13")
    parser.add_argument("--warm", default="quantum-mobile")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/local_build.json")
    parser.add_argument("--cold-only", action="store_true", help="only the cold build per OS")
    args = parser.parse_args()
    systems = [o for o in args.os.split(",") if o]
    warm_flavors = [f for f in args.warm.split(",") if f and f != "slurm-node"]
    tmp = Path(tempfile.mkdtemp(prefix="imageforge-bench-"))
    results: dict[str, Any] = {"machine": machine(), "started": dt.datetime.now(dt.UTC).isoformat()}
    try:
        runs = {os_name: one_os(tmp, os_name, args.cold_only) for os_name in systems}
        newest = runs[systems[-1]]
        newest["warm"] = {}
        for flavor in warm_flavors:
            print(f"[{systems[-1]}] first {flavor} build + verify (cold layer) ...", flush=True)
            newest[f"first_{flavor}"] = build(newest["project"], newest["env"], flavor)
            print(f"[{systems[-1]}] warm {flavor} build + verify ...", flush=True)
            newest["warm"][flavor] = build(newest["project"], newest["env"], flavor, "--force")
        for run in runs.values():
            del run["project"], run["env"]
        results["os"] = runs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results["ratios"] = ratios(results, systems)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results, systems))
    print(f"written to {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


def ratios(r: dict[str, Any], systems: list[str]) -> dict[str, float]:
    """The newest OS over the oldest, for what both measured."""
    if len(systems) < 2:
        return {}
    old, new = r["os"][systems[0]], r["os"][systems[-1]]
    picks = {
        "cold_slurm_node_new_over_old": ("cold_slurm_node", "seconds"),
        "warm_slurm_node_new_over_old": ("warm_slurm_node", "seconds"),
        "raw_packer_new_over_old": ("raw_packer_build_seconds",),
        "boot_to_running_new_over_old": ("cold_slurm_node", "verify_boot", "to_running_seconds"),
        "boot_userspace_new_over_old": ("cold_slurm_node", "verify_boot", "userspace_seconds"),
        "boot_kernel_new_over_old": ("cold_slurm_node", "verify_boot", "kernel_seconds"),
    }
    found = {}
    for name, path in picks.items():
        a, b = _dig(old, path), _dig(new, path)
        if a and b:
            found[name] = round(b / a, 2)
    return found


def _dig(run: dict[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = run
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, int | float) else None


def table(r: dict[str, Any], systems: list[str]) -> str:
    rows: list[tuple[str, str]] = []
    for os_name in systems:
        run = r["os"][os_name]
        for key in ("cold_slurm_node", "warm_slurm_node"):
            if key in run:
                one = run[key]
                boot = one["verify_boot"]
                rows.append(
                    (f"[{os_name}] {key} build + verify", f"{one['seconds']} s  {one['stages']}")
                )
                rows.append(
                    (
                        f"[{os_name}] {key} boot",
                        f"kernel {boot.get('kernel_seconds')} s + userspace "
                        f"{boot.get('userspace_seconds')} s; "
                        f"to login {boot.get('to_login_seconds')} s; "
                        f"running {boot.get('to_running_seconds')} s; packer VM to SSH "
                        f"{one['packer_boot_to_ssh']} s",
                    )
                )
        for key in ("noop_rebuild_seconds", "raw_packer_build_seconds"):
            if key in run:
                rows.append((f"[{os_name}] {key}", f"{run[key]} s"))
        rows += [(f"[{os_name}] ratio {k}", str(v)) for k, v in run.get("ratios", {}).items()]
        for flavor, v in run.get("warm", {}).items():
            rows.append((f"[{os_name}] warm {flavor} build + verify", f"{v['seconds']} s"))
    rows += [(f"ratio {k}", str(v)) for k, v in r["ratios"].items()]
    width = max(len(a) for a, _ in rows)
    return "\n".join(f"{a:<{width}}  {b}" for a, b in rows)


if __name__ == "__main__":
    main()
