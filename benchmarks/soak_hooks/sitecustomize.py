"""glibc's malloc statistics of every process of a server, for benchmarks/soak.py (Linux, glibc >= 2.33).

Python imports `sitecustomize` at start-up from its path; this one does nothing unless SOAK_MALLOC_LOG names a
directory. Then every process started with this folder on PYTHONPATH, and every process it forks, appends a line
to DIR/malloc.PID.log every SOAK_MALLOC_EVERY seconds (default 5): its RSS and mallinfo2() summed over all arenas:
heap bytes, mmapped bytes, bytes in use and bytes free, in MB. For example:

    python benchmarks/soak.py --duration 90 --out /tmp/soak --name heap \\
        --env PYTHONPATH=$PWD:$PWD/benchmarks/soak_hooks --env SOAK_MALLOC_LOG=/tmp/soak
"""

import ctypes
import os
import threading
import time


def _watch(directory: str, every: float) -> None:
    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                   "fsmblks", "uordblks", "fordblks", "keepcost")]

    mallinfo2 = ctypes.CDLL(None).mallinfo2
    mallinfo2.restype = MallInfo2
    page = os.sysconf("SC_PAGE_SIZE")
    with open(os.path.join(directory, f"malloc.{os.getpid()}.log"), "a") as out:
        while True:
            m = mallinfo2()
            with open("/proc/self/statm") as f:
                rss = int(f.read().split()[1]) * page
            out.write(f"{time.time():.0f} rss={rss >> 20} heap={m.arena >> 20} mmap={m.hblkhd >> 20} "
                      f"in_use={m.uordblks >> 20} free={m.fordblks >> 20}\n")
            out.flush()
            time.sleep(every)


if os.environ.get("SOAK_MALLOC_LOG"):
    try:
        ctypes.CDLL(None).mallinfo2  # noqa: B018 (glibc 2.33 and newer)
    except (OSError, AttributeError):
        pass
    else:
        def _start() -> None:
            threading.Thread(target=_watch, args=(os.environ["SOAK_MALLOC_LOG"],
                                                  float(os.environ.get("SOAK_MALLOC_EVERY", "5"))),
                             daemon=True, name="soak-malloc-log").start()

        _start()
        os.register_at_fork(after_in_child=_start)  # forked processes (the API process, the manager) log too
