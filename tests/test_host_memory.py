"""loops/host_memory.py: with train.py's malloc settings a freed large block is reused, not faulted in again."""

import os
import re
import subprocess
import sys

import pytest

from conftest import TINY_MPARAMS, ratio_fits_its_rounded_figures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK_PAGES = (48 << 20) // os.sysconf("SC_PAGE_SIZE")

# A fresh process (malloc settings are per process): 10 blocks of 48 MiB, each freed before the next, more than
# glibc's largest automatic mmap threshold (32 MiB), as a step's largest buffers can be.
PROBE = f"""
import resource
from loops.host_memory import keep_freed_memory
applied = keep_freed_memory()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    block = bytearray({48 << 20})  # zero-filled: every page touched
    del block
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(**env):
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env={**os.environ, **env}, capture_output=True,
                         text=True, timeout=60, check=True).stdout.split()
    return out[0] == "True", int(out[1])


def test_freed_block_is_reused_without_faulting_its_pages_again():
    applied, faults = _faults()
    assert applied
    assert faults < 2 * BLOCK_PAGES  # the first block's pages, once
    # glibc's defaults (a user's own MALLOC_ variable makes keep_freed_memory leave them): each block mapped anew.
    applied, faults = _faults(MALLOC_PERTURB_="0")
    assert not applied
    assert faults > 8 * BLOCK_PAGES


def test_glibc_tunables_of_malloc_are_left_to_the_user():
    from loops.host_memory import user_set_malloc

    assert user_set_malloc({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"})
    assert not user_set_malloc({"GLIBC_TUNABLES": "glibc.rtld.optional_static_tls=512", "PATH": "/bin"})


@pytest.mark.long
def test_compare_malloc_prints_both_arms_and_their_ratios(run_script, tmp_path):
    out = run_script("scripts/compare_malloc.py", "--rounds", 1, "--", "--mparams", TINY_MPARAMS, "--mode", "train",
                     "--train_img_size", 32, "--train_batch_size", 8, "--steps_per_epoch", 2, "--max_epochs", 1,
                     "--warmup_epochs", 0, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {name: [float(v) for v in values.split(" | ")] for name, values in
            re.findall(r"^\| (glibc defaults|train.py's settings|ratio \(defaults / ours\)) \| (.*) \|$", out.stdout,
                       re.M)}
    assert len(rows) == 3 and all(len(v) == 5 for v in rows.values()), out.stdout
    base, ours = rows["glibc defaults"], rows["train.py's settings"]
    assert all(v > 0 for v in base + ours), out.stdout
    # Each ratio is the quotient of the medians, which the table prints rounded (seconds to 0.1, counts to 1).
    for ratio, b, o, half in zip(rows["ratio (defaults / ours)"], base, ours, (0.05, 0.05, 0.05, 0.5, 0.5)):
        assert ratio_fits_its_rounded_figures(ratio, b, o, half), out.stdout
