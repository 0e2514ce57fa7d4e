"""Benchmark: local slurm-node build + verification, cold and warm, and a no-op rebuild.

    python3 bench/local_build.py            # cached base image (warm)
    python3 bench/local_build.py --cold     # also rebuild the base image in a fresh cache

Prints seconds per stage from each build record, and the ratios measured in this one run
(this machine is noisy: compare ratios, not absolute times across runs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from integration.conftest import copy_project  # noqa: E402


def run_build(project: Path, env: dict[str, str], *extra: str) -> tuple[float, dict]:
    start = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "invoke", "build", "--image", "slurm-node", *extra],
        cwd=project,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    seconds = time.monotonic() - start
    newest = sorted((project / "artifacts" / "slurm-node").glob("*/build.json"))[-1]
    return seconds, json.loads(newest.read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--cold", action="store_true", help="build the base image too, in a fresh cache"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="imageforge-bench-"))
    env = dict(os.environ)
    try:
        project = copy_project(work / "project")
        results = {}
        if args.cold:
            env["IMAGEFORGE_CACHE_DIR"] = str(work / "cache")
            results["cold"] = run_build(project, env)
            results["warm"] = run_build(project, env, "--force")
        else:
            results["warm"] = run_build(project, env)
        results["noop"] = run_build(project, env)
        for name, (seconds, record) in results.items():
            stages = ", ".join(f"{k} {v:.1f}s" for k, v in record["timings"].items())
            print(
                f"{name:>5}: {seconds:7.1f}s wall  ({stages})  accelerator={record['accelerator']}"
            )
        noop = results["noop"][0]
        warm = results["warm"][0]
        print(f"ratio no-op / warm build: {noop / warm:.4f}  (no-op {noop:.2f}s)")
        if "cold" in results:
            print(f"ratio warm / cold build: {warm / results['cold'][0]:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
