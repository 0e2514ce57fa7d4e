"""Benchmark of the local loop, measured in one run on one machine, with ratios.

    python3 bench/local_build.py [--warm slurm-node,training-desktop] [--out FILE]

In fresh caches (a temporary IMAGEFORGE_CACHE_DIR, nothing shared with the user's cache):
1. cold slurm-node: `invoke build` from an empty cache (layer, packer build, verification);
2. no-op rebuild: the same command again;
3. warm slurm-node build + verify: `invoke build --force` (layer cached);
4. raw `packer build` of the same rendered template, with the same variables (the baseline);
5. cold base image, in a cache of its own (every package downloaded);
6. cold layer of every flavor, and a second cold slurm-node layer (as --refresh does);
7. warm build + verify of the other flavors named in --warm.
Prints a table and the ratios, and writes them as JSON (default bench/results/local_build.json).
This machine is noisy: compare the ratios of one run, not absolute times across runs.
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

from imageforge import buildsecrets, packer, qemu  # noqa: E402
from imageforge.clouds.local import seed_user_data  # noqa: E402

FLAVORS = ("slurm-node", "training-desktop", "quantum-mobile")


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.monotonic()
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(argv)}\n{result.stderr[-3000:]}")
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


def layer(env: dict[str, str], flavor: str | None, *, force: bool = False) -> dict[str, Any]:
    """Time base.ensure_base in a fresh interpreter: a flavor's layer, or the base (None)."""
    packages = f"config.load('images.yml').images.flavors[{flavor!r}].packages" if flavor else "()"
    code = (
        "import json, time\n"
        "from imageforge import base, config\n"
        f"recipe = base.BaseRecipe(extra_packages={packages})\n"
        "start = time.monotonic()\n"
        f"image = base.ensure_base(recipe, force={force})\n"
        "print(json.dumps({'seconds': round(time.monotonic() - start, 1), "
        "'downloaded': image.downloaded, 'packages': len(image.packages)}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        sys.exit(f"layer {flavor or 'base'} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


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
    rendered = project / "build" / "slurm-node-local"
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--warm", default="slurm-node,training-desktop")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/local_build.json")
    args = parser.parse_args()
    warm_flavors = [f for f in args.warm.split(",") if f]
    tmp = Path(tempfile.mkdtemp(prefix="imageforge-bench-"))
    env = {**os.environ, "IMAGEFORGE_CACHE_DIR": str(tmp / "cache")}
    project = copy_project(tmp / "project")
    results: dict[str, Any] = {"machine": machine(), "started": dt.datetime.now(dt.UTC).isoformat()}
    try:
        print("cold slurm-node build + verify (empty cache) ...", flush=True)
        results["cold_slurm_node"] = build(project, env, "slurm-node")
        print("no-op rebuild ...", flush=True)
        argv = [sys.executable, "-m", "invoke", "build", "--image", "slurm-node"]
        results["noop_rebuild_seconds"] = timed(argv, project, env)
        print("warm slurm-node build + verify ...", flush=True)
        results["warm"] = {"slurm-node": build(project, env, "slurm-node", "--force")}
        print("raw packer build of the same template ...", flush=True)
        build_id = results["warm"]["slurm-node"]["build_id"]
        results["raw_packer_build_seconds"] = raw_packer(project, env, build_id, tmp / "raw")
        print("cold base (a cache of its own) ...", flush=True)
        results["cold_base"] = layer({**env, "IMAGEFORGE_CACHE_DIR": str(tmp / "cache2")}, None)
        cold = results["cold_slurm_node"]
        results["cold_layer"] = {"slurm-node": cold.pop("layer")}
        for flavor in FLAVORS[1:]:
            print(f"cold layer {flavor} ...", flush=True)
            results["cold_layer"][flavor] = layer(env, flavor)
        results["second_cold_layer_slurm_node"] = layer(env, "slurm-node", force=True)
        for flavor in warm_flavors:
            if flavor != "slurm-node":
                print(f"first {flavor} build + verify (its layer is cached above) ...", flush=True)
                build(project, env, flavor)
                print(f"warm {flavor} build + verify ...", flush=True)
                results["warm"][flavor] = build(project, env, flavor, "--force")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results["ratios"] = ratios(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"written to {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


def ratios(r: dict[str, Any]) -> dict[str, float]:
    warm = r["warm"]["slurm-node"]["seconds"]
    first, second = r["cold_layer"]["slurm-node"], r["second_cold_layer_slurm_node"]
    return {
        "warm_build_verify_over_raw_packer_build": round(warm / r["raw_packer_build_seconds"], 2),
        "noop_over_warm_build_verify": round(r["noop_rebuild_seconds"] / warm, 4),
        "cold_over_warm_slurm_node": round(r["cold_slurm_node"]["seconds"] / warm, 2),
        "second_over_first_cold_layer": round(second["seconds"] / first["seconds"], 2),
    }


def table(r: dict[str, Any]) -> str:
    warm = r["warm"]["slurm-node"]
    boot = warm["verify_boot"]
    rows = [
        ("cold slurm-node build + verify (empty cache)", f"{r['cold_slurm_node']['seconds']} s"),
        ("warm slurm-node build + verify", f"{warm['seconds']} s  {warm['stages']}"),
        ("raw packer build, same template", f"{r['raw_packer_build_seconds']} s"),
        ("no-op rebuild", f"{r['noop_rebuild_seconds']} s"),
        (
            "cold base (own cache)",
            f"{r['cold_base']['seconds']} s, {r['cold_base']['downloaded']} downloaded",
        ),
        *(
            (
                f"cold layer {f}",
                f"{v['seconds']} s, {v['packages']} packages, {v['downloaded']} downloaded",
            )
            for f, v in r["cold_layer"].items()
        ),
        (
            "second cold slurm-node layer",
            f"{r['second_cold_layer_slurm_node']['seconds']} s, "
            f"{r['second_cold_layer_slurm_node']['downloaded']} downloaded",
        ),
        (
            "boot (verification, slurm-node)",
            f"kernel {boot.get('kernel_seconds')} s + userspace {boot.get('userspace_seconds')} s; "
            f"to login {boot.get('to_login_seconds')} s",
        ),
        (
            "testinfra checks once running",
            f"{warm['checks']} checks in {boot.get('checks_seconds')} s",
        ),
        ("packer build VM to SSH", f"{warm['packer_boot_to_ssh']} s"),
        *(
            (f"warm {f} build + verify", f"{v['seconds']} s  {v['stages']}")
            for f, v in r["warm"].items()
            if f != "slurm-node"
        ),
        *((f"ratio {k}", str(v)) for k, v in r["ratios"].items()),
    ]
    width = max(len(a) for a, _ in rows)
    return "\n".join(f"{a:<{width}}  {b}" for a, b in rows)


if __name__ == "__main__":
    main()
