"""Run `ganserve serve` as a child process on a free loopback port, for tests, benchmarks and notebooks.

Owns starting it, waiting until /health says ready, listing its process tree, and stopping it with SIGTERM.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_tree(root: int) -> set[int]:
    """A process and all below it (Linux: read from /proc)."""
    out, todo = set(), [root]
    while todo:
        pid = todo.pop()
        out.add(pid)
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                todo += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except OSError:
            pass
    return out


class ServerProcess:
    """`ganserve serve MODELS FLAGS --host 127.0.0.1 --port PORT` in its own session (process group)."""

    def __init__(self, models: list[str], *flags: str, port: int | None = None, log: str | Path | None = None,
                 env: dict[str, str] | None = None):
        self.env = env  # the server's environment, if not this process's (e.g. PYTHONPATH for another checkout)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, "-m", "ganserve.cli", "serve", *models, *flags, "--port", str(self.port)]
        self.log_path = Path(log) if log else Path(tempfile.mkstemp(prefix="ganserve-serve-", suffix=".log")[1])
        self._own_log = log is None  # a temporary log: removed after a clean stop
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> ServerProcess:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                         env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.kill()
        raise TimeoutError(f"the server was not ready after {timeout:.0f} s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def descendants(self) -> set[int]:
        """The server's process and all below it (Linux: read from /proc)."""
        return process_tree(self.proc.pid) if self.proc else set()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send `sig` to the main process and wait for it to exit; returns its exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL the whole process group (a last resort)."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, exc_type, *exc) -> None:
        try:
            status = self.stop()
        finally:
            self.kill()
        if self._own_log and exc_type is None and status == 0:
            self.log_path.unlink(missing_ok=True)


def alive(pid: int) -> bool:
    """True while `pid` runs; a zombie (exited, not yet reaped by its new parent) counts as gone."""
    stat = Path(f"/proc/{pid}/stat")
    if Path("/proc").is_dir():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True
