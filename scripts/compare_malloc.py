"""Benchmark of loops/host_memory.py: the same train.py command with glibc's malloc defaults and with the settings
train.py applies, run alternately (round 1 both arms, round 2 both arms, ...), one table of medians:

    .venv/bin/python scripts/compare_malloc.py [--rounds 3] -- --flagfile flags/demo.cfg --max_epochs 2

The flags after `--` go to train.py (each run gets its own temporary --model_dir). The defaults arm sets
MALLOC_PERTURB_=0, a glibc variable at its default value: a user's own malloc setting makes train.py leave
glibc alone. Columns: wall time, user and kernel CPU time, minor page faults and peak resident memory of the train.py
process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARMS = (("glibc defaults", {"MALLOC_PERTURB_": "0"}), ("train.py's settings", {}))


def run_once(train_flags: list[str], extra_env: dict) -> dict:
    with tempfile.TemporaryDirectory() as model_dir, tempfile.TemporaryFile("w+") as stderr:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, os.path.join(REPO, "train.py"), "--model_dir", model_dir,
                                 *train_flags], cwd=REPO, env={**os.environ, **extra_env},
                                stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own resource usage, not all children's
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            stderr.seek(0)
            last = (stderr.read().strip().splitlines() or [""])[-1]
            sys.exit(f"compare_malloc.py: train.py exited {proc.returncode}: {last}")
    return {"wall": wall, "user": usage.ru_utime, "sys": usage.ru_stime, "faults": usage.ru_minflt,
            "rss": usage.ru_maxrss / 1024}  # KiB on Linux


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("train_flags", nargs="*", help="train.py flags (after --)")
    args = parser.parse_args()
    results = {name: [] for name, _ in ARMS}
    for round_index in range(args.rounds):
        for name, extra_env in ARMS:
            results[name].append(run_once(args.train_flags, extra_env))
            r = results[name][-1]
            print(f"round {round_index + 1}, {name}: {r['wall']:.1f} s wall, {r['user']:.1f} s user, "
                  f"{r['sys']:.1f} s kernel, {r['faults']} minor faults, peak RSS {r['rss']:.0f} MiB", flush=True)
    print(f"\nMedians of {args.rounds} rounds, train.py {' '.join(args.train_flags)}\n")
    print("| malloc | wall s | user s | kernel s | minor page faults | peak RSS MiB |")
    print("|---|---|---|---|---|---|")
    medians = {name: {k: statistics.median(r[k] for r in runs) for k in ("wall", "user", "sys", "faults", "rss")}
               for name, runs in results.items()}
    for name, m in medians.items():
        print(f"| {name} | {m['wall']:.1f} | {m['user']:.1f} | {m['sys']:.1f} | {m['faults']:.0f} | {m['rss']:.0f} |")
    base, ours = (medians[name] for name, _ in ARMS)
    ratios = " | ".join(f"{base[k] / ours[k]:.2f}" for k in ("wall", "user", "sys", "faults", "rss"))
    print(f"| ratio (defaults / ours) | {ratios} |")


if __name__ == "__main__":
    main()
