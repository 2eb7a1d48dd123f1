"""Reliability on damaged inputs: run ``gvsl scan`` and ``gvsl prepare`` as a user would (subprocesses) on the
damaged collections of ``Testing/Python/damaged_inputs.py`` for several seeds, and print a Markdown table: each kind
of input, how often it was tried, how it was answered (usable or not, and the reasons), whether any command printed a
traceback or exited non-zero, and whether the cache held only complete, finite 3D volumes.

    python benchmarks/reliability.py --seeds 0 1 2 3 4 --out /tmp/reliability
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Testing" / "Python"))
from damaged_inputs import build_damaged_collection, case_of  # noqa: E402


def gvsl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gvsl", *args], capture_output=True, text=True, timeout=1200)


def category(reason: str) -> str:
    """A reason without its specifics (file names, counts)."""
    return re.split(r" \(|: |;", reason, maxsplit=1)[0]


def run_seed(root: Path, seed: int, answers: dict, tried: Counter, failures: list[str]) -> None:
    collection = build_damaged_collection(root / f"seed{seed}" / "collection", seed=seed)
    cache = root / f"seed{seed}" / "cache"
    scanned = gvsl("scan", str(collection.root), "--json")
    table = gvsl("scan", str(collection.root))
    prepared = gvsl("prepare", str(collection.root), "--cache", str(cache), "--spacing", "4", "--no-progress")
    for name, done in (("scan --json", scanned), ("scan", table), ("prepare", prepared)):
        if done.returncode != 0 or "Traceback" in done.stderr:
            failures.append(f"seed {seed} {name}: exit {done.returncode}\n{done.stderr[-2000:]}")
    records = json.loads(scanned.stdout)
    manifest = json.loads((cache / "manifest.json").read_text())
    cached = {e["key"]: e for e in manifest["entries"] if e["status"] == "ok"}
    for entry in cached.values():
        array = np.load(cache / entry["file"])
        if array.ndim != 3 or list(array.shape) != entry["shape"] or not np.isfinite(array).all():
            failures.append(f"seed {seed}: cache entry {entry['key']} incomplete or not finite")
    by_case = defaultdict(list)
    for record in records:
        by_case[case_of(collection, record["files"][0]).name].append(record)
    for case in collection.cases:
        tried[case.kind] += 1
        found = by_case.get(case.name, [])
        if not found:
            answers[case.kind]["not an image: ignored"] += 1
        elif any(r["usable"] for r in found):
            parts = [r for r in found if r["usable"]]
            in_cache = all(r["key"] in cached for r in parts)
            answers[case.kind]["usable" + (", cached" if in_cache else ", NOT cached")] += 1
            if case.broken:
                failures.append(f"seed {seed}: broken input {case.name} called usable")
        else:
            answers[case.kind][category(found[0]["reason"])] += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", type=Path, default=Path("/tmp/gvsl-reliability"))
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    answers: dict[str, Counter] = defaultdict(Counter)
    tried: Counter = Counter()
    failures: list[str] = []
    for seed in args.seeds:
        run_seed(args.out, seed, answers, tried, failures)
    print(f"seeds {args.seeds}: {sum(tried.values())} inputs, {3 * len(args.seeds)} commands\n")
    print("| input | tried | answered |")
    print("|---|---:|---|")
    for kind, n in tried.items():
        print(f"| {kind} | {n} | " + "; ".join(f"{a} x{k}" for a, k in answers[kind].most_common()) + " |")
    print(f"\nfailures (traceback, non-zero exit, broken input usable, bad cache entry): {len(failures)}")
    for failure in failures:
        print(failure)


if __name__ == "__main__":
    main()
