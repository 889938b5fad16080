"""Device selection: 'auto' means CUDA when available, else CPU; asking for a device that is absent is an error.

Owns the one rule that turns a --device flag into a Device, and how a process is set up for CPU inference.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
from pathlib import Path

from ganserve.errors import UsageError

DEVICE_CHOICES = ("auto", "cpu", "cuda")
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "QUOTA PERIOD" in microseconds, or "max PERIOD"

# glibc mallopt parameters, and what keep_freed_memory sets them to
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20  # the largest glibc accepts on 64-bit: blocks below this come from the heap, and stay
TRIM_THRESHOLD = 256 << 20  # free memory at the top of the heap is given back to the kernel only beyond this


class Device(str):
    """A resolved device ("cpu", "cuda", "cuda:1") with torch.device's `type` and `index`. It is a str, which torch
    takes wherever it takes a device, so that a process running an exported model on the CPU need not import torch
    (about a second) to name its device."""

    @property
    def type(self) -> str:
        return self.partition(":")[0]

    @property
    def index(self) -> int | None:
        return int(self.partition(":")[2]) if ":" in self else None

    def __eq__(self, other: object) -> bool:  # equal to the torch.device of the same name, too
        if isinstance(other, str):
            return str.__eq__(self, other)
        if hasattr(other, "type") and hasattr(other, "index"):
            return (self.type, self.index) == (other.type, other.index)
        return NotImplemented

    __hash__ = str.__hash__


# Where a GPU that torch could use shows itself without torch: NVIDIA's driver, WSL's GPU, ROCm's kernel driver.
GPU_DRIVER_PATHS = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/dxg", "/dev/kfd")


def resolve_device(name: str = "auto") -> Device:
    """'auto': CUDA when torch sees a GPU, else the CPU; 'cpu'; 'cuda' or 'cuda:N' (an error without a GPU).

    'auto' imports torch to ask only where a GPU driver is present (or torch is loaded already, or the system is not
    Linux, where the check below does not apply)."""
    if name == "auto":
        if "torch" not in sys.modules and sys.platform.startswith("linux") and not any(
                os.path.exists(p) for p in GPU_DRIVER_PATHS):
            return Device("cpu")
        import torch

        return Device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        import torch

        try:
            device = torch.device(name)
        except RuntimeError:
            device = None
        if device is None or device.type != "cuda":
            raise UsageError(f"device must be one of {', '.join(DEVICE_CHOICES)} (or cuda:N), got {name!r}")
        if not torch.cuda.is_available():
            raise UsageError(f"device {name!r} asked for, but this machine has no CUDA GPU (torch sees none)")
        return Device(str(device))
    if name == "cpu":
        return Device("cpu")
    raise UsageError(f"device must be one of {', '.join(DEVICE_CHOICES)} (or cuda:N), got {name!r}")


def cpu_cores(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The cores this process may use: those of its affinity mask, or fewer where a cgroup (v2) CPU quota allows
    less (a container with `--cpus 2` or a Kubernetes CPU limit sees every core of the host in its mask)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):  # no cgroup v2 CPU controller here, or a format we do not know
        pass
    return cores


def cpu_threads_per_worker(workers: int) -> int:
    """Torch threads for each of `workers` CPU inference processes: the cores less one (the HTTP process's),
    shared out, rounded, at least one."""
    return max(1, round((cpu_cores() - 1) / workers))


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the kernel at once.

    Eager PyTorch on the CPU allocates and frees the same activation buffers in every batch. By default glibc maps
    large blocks afresh and trims the heap, so every batch would page-fault its buffers back in. With this a process
    keeps up to TRIM_THRESHOLD of free heap. Returns False where malloc is not glibc's (nothing changes there).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # Setting the mmap threshold first also turns off glibc's own adjustment of both thresholds.
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1


def default_batch_size(device: Device | str) -> int:
    """Images per batch unless asked otherwise (`ganserve serve --max-batch-size`, `ganserve generate
    --batch-size`): 32 on a GPU, where larger batches keep paying; 8 on the CPU, where an image costs as little at
    batch 8 as at 32 (ONNX Runtime 2.26 against 2.38 ms on one core for the bundled StyleGAN), a new process warms up
    a quarter of the memory, and a server's smaller batches keep both workers busy while the previous answers go out
    (1.08x the images/s of 32 at 32 clients with ONNX Runtime, 1.05x with eager torch: benchmarks/README.md)."""
    return 32 if str(device).startswith("cuda") else 8


def set_torch_threads(threads: int | None) -> None:
    """torch's intra-op threads, when given (torch is imported only then)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def setup_cpu_inference(threads: int | None = None) -> None:
    """What a process that runs a generator on the CPU does first: torch's intra-op threads (when given), and
    keep_freed_memory."""
    set_torch_threads(threads)
    keep_freed_memory()


def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16), where bf16 autocast pays; elsewhere
    oneDNN emulates it, slower than float32."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False
