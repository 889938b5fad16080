"""Device resolution and the CPU inference set-up."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from ganserve.devices import GPU_DRIVER_PATHS, Device, cpu_cores, keep_freed_memory, resolve_device

# Runs a few convolutions on a batch 20 times, as a generator would, and prints the page faults that caused.
FAULTS = """
import resource, sys, torch
from ganserve.devices import keep_freed_memory
torch.set_num_threads(1)
if sys.argv[1] == "keep":
    assert keep_freed_memory()
x, w = torch.randn(8, 32, 64, 64), torch.randn(32, 32, 3, 3)
def step():
    y = x
    for _ in range(4):
        y = torch.nn.functional.conv2d(y, w, padding=1).relu()
    return y.sum()
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("tpu", "cudax", "cuda:x"):
        with pytest.raises(ValueError, match="device must be one of"):
            resolve_device(bad)


def test_a_device_is_a_str_that_torch_takes_and_compares_like_a_torch_device():
    cpu = resolve_device("cpu")
    assert isinstance(cpu, str) and cpu == "cpu" and (cpu.type, cpu.index) == ("cpu", None)
    assert torch.zeros(2).to(cpu).device == cpu and torch.device(cpu) == cpu
    cuda1 = Device("cuda:1")
    assert (cuda1.type, cuda1.index) == ("cuda", 1)
    assert cuda1 == torch.device("cuda", 1) and torch.device("cuda", 1) == cuda1
    assert cuda1 != torch.device("cuda") and Device("cuda") != torch.device("cuda", 0)  # as torch compares them


def test_auto_on_a_machine_without_a_gpu_driver_does_not_import_torch():
    code = ("import sys; from ganserve.devices import resolve_device; d = resolve_device('auto'); "
            "print(d, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    if any(os.path.exists(p) for p in GPU_DRIVER_PATHS):
        assert out[1] == "True"  # a driver is here: torch is asked
    else:
        assert out == ["cpu", "False"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_keep_freed_memory_stops_the_page_faults_of_a_repeated_large_allocation():
    def faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True)
        return int(out.stdout.split()[-1])

    default, kept = faults("default"), faults("keep")
    assert default > 10_000  # each 4 MiB activation's pages faulted in afresh, every time (~50,000 here)
    assert kept < default / 5, (default, kept)  # ~1,000 here


def test_keep_freed_memory_reports_whether_it_applied():
    assert keep_freed_memory() is sys.platform.startswith("linux")


@pytest.mark.parametrize(("cpu_max", "limit"), [
    ("200000 100000\n", 2), ("150000 100000\n", 2), ("50000 100000\n", 1), ("max 100000\n", None), ("junk", None),
])
def test_cpu_cores_honours_a_cgroup_cpu_quota(tmp_path, cpu_max, limit):
    """A container limited to 2 CPUs still sees every core of its host in its affinity mask."""
    mask = len(os.sched_getaffinity(0))
    path = tmp_path / "cpu.max"
    path.write_text(cpu_max)
    assert cpu_cores(path) == (mask if limit is None else min(mask, limit))
    assert cpu_cores(tmp_path / "absent") == mask
