"""Benchmark of the step cache on slurm-node, every number from one run.

    python3 bench/step_cache.py [--image slurm-node] [--out FILE]

In a throwaway copy of the project, with this user's caches (the layer is warm):
1. build without the step cache (`IMAGEFORGE_STEP_CACHE_GB=0 invoke build --force --no-verify`);
2. the same build with the step cache on (`--force`: from the layer, every step saved);
   compared by their packer stage (the first may also have made the layer);
3. a warm full build + verify (`invoke build --force`);
4. the flavor's last provisioner made to fail (`invoke build --on-error=keep`: fails after the
   steps before it, which come from the cache, and keeps its VM), then fixed (a changed line)
   and built again: the resumed build + verify, which first releases the kept VM.
Prints and writes (default bench/results/step_cache.json) the times, the ratios 2/1 (target
<= 1.15) and resumed/3 (target <= 0.5), and the step cache's disk use for the flavor.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
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

from imageforge import config  # noqa: E402
from imageforge.config import matrix  # noqa: E402
from imageforge.stages import steps  # noqa: E402


def build(project: Path, image: str, *extra: str, cache_gb: str | None = None) -> dict[str, Any]:
    env = dict(os.environ)
    if cache_gb is not None:
        env["IMAGEFORGE_STEP_CACHE_GB"] = cache_gb
    start = time.monotonic()
    argv = [sys.executable, "-m", "invoke", "build", "--image", image, *extra]
    result = subprocess.run(argv, cwd=project, env=env, capture_output=True, text=True)
    seconds = round(time.monotonic() - start, 1)
    record = max(
        (json.loads(p.read_text()) for p in (project / "artifacts" / image).glob("*/build.json")),
        key=lambda r: r["started_at"],
    )
    return {
        "seconds": seconds,
        "exit": result.returncode,
        "status": record["status"],
        "steps": [s["source"] for s in record.get("steps", [])],
        "timings": record["timings"],
        "stderr_tail": result.stderr[-1500:] if result.returncode else "",
        "id": record["id"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="slurm-node")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "step_cache.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imageforge-bench-") as tmp:
        project = copy_project(Path(tmp) / "project")
        cell = matrix.find(config.load(project / "images.yml"), args.image, "local")
        last = project / cell.flavor.provisioners[-1].script
        original = last.read_text()
        # Keys new to this run: nothing of the flavor's own steps comes from an earlier one.
        last.write_text(original + f"\n# bench {time.time()}\n")
        runs: dict[str, Any] = {}
        runs["without_cache"] = build(project, args.image, "--force", "--no-verify", cache_gb="0")
        runs["with_cache"] = build(project, args.image, "--force", "--no-verify")
        runs["warm_full_build_verify"] = build(project, args.image, "--force")
        # Fails as it starts (a line after the shebang), whatever the script does at its end.
        shebang, _, body = original.partition("\n")
        last.write_text(f"{shebang}\nraise SystemExit('bench: the last step fails')\n{body}")
        runs["failing_last_step"] = build(project, args.image, "--on-error=keep")
        if runs["failing_last_step"]["exit"] == 0:
            sys.exit("the last step was meant to fail, and did not")
        print(runs["failing_last_step"]["stderr_tail"])
        last.write_text(original + f"\n# fixed {time.time()}\n")
        runs["resumed_build_verify"] = build(project, args.image)
        if runs["resumed_build_verify"]["status"] != "verified":
            sys.exit(f"the resumed build did not verify: {runs['resumed_build_verify']}")
        kept = project / "artifacts" / args.image / runs["failing_last_step"]["id"] / "kept.json"
        if kept.exists():
            sys.exit("the resumed build did not release the VM kept from the failed one")
        store = steps.cache()
        flavor = [e for e in store.entries() if e.flavor == args.image]
    # The packer stage (boot, steps, copies, flattening): the first run may also make the layer.
    ratio = runs["with_cache"]["timings"]["packer"] / runs["without_cache"]["timings"]["packer"]
    resume = runs["resumed_build_verify"]["seconds"] / runs["warm_full_build_verify"]["seconds"]
    result = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "image": args.image,
        "runs": runs,
        "ratios": {
            "cold_with_cache_over_without": round(ratio, 3),
            "resumed_over_warm_full_build_verify": round(resume, 3),
        },
        "cache": {
            "entries_for_image": len(flavor),
            "mib_for_image": round(sum(e.size for e in flavor) / 2**20, 1),
            "mib_total": round(store.size() / 2**20, 1),
        },
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, run in runs.items():
        print(f"{name:28} {run['seconds']:8.1f} s  exit {run['exit']}  {run['status']}")
    print(json.dumps(result["ratios"], indent=2), json.dumps(result["cache"], indent=2))


if __name__ == "__main__":
    main()
