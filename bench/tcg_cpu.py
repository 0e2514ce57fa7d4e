"""Benchmark of the CPU model a TCG guest gets: QEMU's "max" against imageforge's TCG_CPU.

    python3 bench/tcg_cpu.py [--image QCOW2] [--user NAME] [--rounds N] [--out FILE]

Boots one image (default: the newest verified local slurm-node build in this checkout) on a
throwaway overlay, alternating the two models round by round, with the verification's seed.
Each boot measures, from QEMU's start: the SSH banner, the first login and a running system
(`systemctl is-system-running --wait`), systemd-analyze's kernel and userspace times, and one
CPU-bound guest job, byte-compiling cloud-init's package (Python, as provisioners and first-boot
programs are). Prints the medians and the ratios (TCG_CPU over max) and writes them as JSON
(default bench/results/tcg_cpu.json). Alternating in one run keeps this noisy machine's drift
out of the ratios; compare ratios, not absolute times across runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imageforge.clouds.local import seed_user_data  # noqa: E402
from imageforge.process import qcow2, qemu, reap  # noqa: E402
from imageforge.stages import sshchecks  # noqa: E402

MODELS = {"max": "max", "tcg_cpu": qemu.TCG_CPU}
GUEST_JOB = (
    "s=$(date +%s.%N); python3 -m compileall -q -f -d /x -o 0 "
    "/usr/lib/python3/dist-packages/cloudinit >/dev/null; e=$(date +%s.%N); "
    'python3 -c "print(round($e - $s, 2))"'
)


class ModelVM(qemu.VirtualMachine):
    """A VirtualMachine whose TCG CPU model is chosen here."""

    model: str = qemu.TCG_CPU

    def argv(self) -> list[str]:
        argv = super().argv()
        argv[argv.index("-cpu") + 1] = self.model
        return argv


def newest_verified_image() -> Path:
    for record in sorted(ROOT.glob("artifacts/slurm-node/*/build.json"), reverse=True):
        data = json.loads(record.read_text())
        if data.get("status") == "verified" and data.get("cloud") == "local":
            return record.parent / "image" / "slurm-node.qcow2"
    sys.exit("no verified local slurm-node build here: run `invoke build --image slurm-node`")


def boot(image: Path, model: str, user: str, scratch: Path) -> dict[str, float]:
    key = scratch / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    disk = qcow2.overlay(image, scratch / "overlay.qcow2")
    seed = qemu.make_seed(
        scratch / "seed.iso",
        user_data=seed_user_data(key.with_suffix(".pub").read_text().strip()),
        meta_data="instance-id: bench\nlocal-hostname: bench\n",
    )
    vm = ModelVM(disk=disk, serial_log=scratch / "serial.log", seed=seed, memory_mb=2048)
    vm.model = model
    vm.restrict_network = True
    start = time.monotonic()
    with vm:
        vm.wait_for_ssh(900)
        banner = time.monotonic() - start
        with sshchecks.session("127.0.0.1", vm.ssh_port, user, key, scratch) as ssh:
            sshchecks.wait_for_login(ssh, attempts=300)
            login = time.monotonic() - start
            ssh.run("systemctl is-system-running --wait")
            running = time.monotonic() - start
            times = sshchecks.startup(ssh, scratch / "boot.log")
            job = float(ssh.run(GUEST_JOB).output.strip().splitlines()[-1])
    return {
        "ssh_banner": round(banner, 1),
        "login": round(login, 1),
        "running": round(running, 1),
        "kernel": times.get("kernel_seconds", 0.0),
        "userspace": times.get("userspace_seconds", 0.0),
        "compileall_cloudinit": job,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image", type=Path)
    parser.add_argument("--user", default="debian", help="the image's cloud-init default user")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--other", default="max", help="the model to compare TCG_CPU with (a QEMU -cpu value)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/tcg_cpu.json")
    args = parser.parse_args()
    image = (args.image or newest_verified_image()).resolve()
    MODELS["max"] = args.other
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in MODELS}
    for n in range(args.rounds):
        for name, model in MODELS.items():
            with reap.scratch("imageforge-bench-") as scratch:
                print(f"round {n + 1}: {name} ({model}) ...", flush=True)
                runs[name].append(boot(image, model, args.user, Path(scratch)))
                print(f"  {runs[name][-1]}", flush=True)
    medians = {
        name: {k: round(statistics.median(r[k] for r in rows), 2) for k in rows[0]}
        for name, rows in runs.items()
    }
    ratios = {
        k: round(medians["tcg_cpu"][k] / medians["max"][k], 2)
        for k in medians["max"]
        if medians["max"][k]
    }
    results: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(),
        "image": str(image.relative_to(ROOT) if image.is_relative_to(ROOT) else image),
        "models": MODELS,
        "runs": runs,
        "medians": medians,
        "ratios_tcg_cpu_over_max": ratios,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    for key in medians["max"]:
        print(
            f"{key:22} max {medians['max'][key]:7.2f}   tcg_cpu {medians['tcg_cpu'][key]:7.2f}"
            f"   ratio {ratios.get(key, 0):.2f}"
        )
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
