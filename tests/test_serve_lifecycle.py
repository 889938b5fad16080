"""Server limits and lifecycle over real HTTP: the API key, a full queue (503 + Retry-After), and SIGTERM / Ctrl-C
draining in-flight requests and leaving no process behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from serving import parts_of, pixels, torch_blocked_env

from ganserve.devices import cpu_cores
from ganserve.multipart import MultipartParser, boundary_of
from ganserve.serve.process import ServerProcess, alive

pytestmark = pytest.mark.slow
KEY = "s3cret-key"


@pytest.fixture(scope="module")
def server(model_dirs, tmp_path_factory):
    """A server with an API key and a queue of 2 images; the last test of the module stops it."""
    flags = ["--backend", "torch", "--device", "cpu", "--api-key", KEY, "--max-queue", "2", "--max-batch-size", "2",
             "--batch-timeout-ms", "30", "--log-level", "warning"]
    with ServerProcess([model_dirs["stylegan"]], *flags, log=tmp_path_factory.mktemp("life") / "server.log") as s:
        yield s


def test_api_key_is_required_everywhere_but_health(server):
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for path in ("/generate?seed=1", "/models", "/metrics", "/docs", "/openapi.json"):
            for headers in ({}, {"X-API-Key": "wrong"}):
                r = http.get(path, headers=headers)
                assert r.status_code == 401 and "API key" in r.json()["detail"], (path, headers)
        assert http.get("/health").status_code == 200
        page = http.get("/")  # the static gallery page: it asks the user for the key itself
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert http.get("/generate?seed=1", headers={"X-API-Key": KEY}).status_code == 200
        assert http.get("/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        r = http.post("/generate", json={"seeds": [1]}, headers={"X-API-Key": KEY})
        assert r.status_code == 200 and r.content.count(b"X-Seed: 1") == 1


def test_a_full_queue_answers_503_with_retry_after(server):
    n = 40
    barrier = threading.Barrier(n)

    def fetch(seed):
        with httpx.Client(base_url=server.url, timeout=60, headers={"X-API-Key": KEY}) as http:
            barrier.wait()
            return http.get("/generate", params={"seed": seed})

    with ThreadPoolExecutor(n) as pool:
        responses = list(pool.map(fetch, range(n)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503} and statuses.count(503) >= 1 and statuses.count(200) >= 2, statuses
    for r in responses:
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) >= 1 and "busy" in r.json()["detail"]
    with httpx.Client(base_url=server.url, timeout=60, headers={"X-API-Key": KEY}) as http:
        assert http.get("/generate", params={"seed": 1}).status_code == 200  # drained: served again
        metrics = http.get("/metrics").text
    assert f"ganserve_queue_full_total {float(statuses.count(503))}" in metrics


def _stream_in_background(url: str, seeds: str, result: dict) -> threading.Thread:
    def run():
        parts = []
        with httpx.stream("POST", f"{url}/generate", json={"seeds": seeds}, headers={"X-API-Key": KEY},
                          timeout=30) as r:
            parser = MultipartParser(boundary_of(r.headers["content-type"]))
            for chunk in r.iter_bytes():
                parts += parser.feed(chunk)
                result["started"] = True
            parser.close()
        result["seeds"] = [int(p.headers["x-seed"]) for p in parts]

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _stop_while_streaming(server: ServerProcess, send_signal) -> None:
    processes = server.descendants()
    assert len(processes) >= 3  # main, queue manager, API server, inference worker
    result: dict = {}
    thread = _stream_in_background(server.url, "0-59", result)
    deadline = time.monotonic() + 30
    while "started" not in result and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "started" in result, "the stream did not start"
    send_signal()
    try:
        server.proc.wait(60)  # a guard against hanging only: how fast it stops is no part of the test
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server did not exit after the signal:\n{server.log()[-2000:]}")
    thread.join(30)
    assert result.get("seeds") is not None and sorted(result["seeds"]) == list(range(60)), "in-flight not drained"
    time.sleep(0.5)
    assert [pid for pid in processes if alive(pid)] == [], "processes left behind"


def test_sigterm_drains_in_flight_requests_and_leaves_no_process(server):
    _stop_while_streaming(server, lambda: server.proc.send_signal(signal.SIGTERM))
    assert server.proc.returncode == 0
    assert "Traceback" not in server.log()


def test_ctrl_c_to_the_process_group_drains_and_leaves_no_process(model_dirs, tmp_path):
    # info: should the shutdown ever hang, the log tail in the failure shows how far it got
    flags = ["--device", "cpu", "--api-key", KEY, "--workers-per-device", "2", "--log-level", "info"]
    with ServerProcess([model_dirs["stylegan"]], *flags, log=tmp_path / "server.log") as s:
        _stop_while_streaming(s, lambda: os.killpg(s.proc.pid, signal.SIGINT))
        assert "Traceback" not in s.log()


def _group_members(pgid: int) -> list[int]:
    """Live processes in process group `pgid` (Linux /proc)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry.name))
    return members


def test_a_model_that_fails_to_load_stops_the_server_with_one_line_and_no_process_left(model_dirs, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(Path(model_dirs["stylegan"]) / "config.json", broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    server = ServerProcess([str(broken)], "--device", "cpu", "--log-level", "warning", log=tmp_path / "server.log")
    with pytest.raises(RuntimeError, match="exited with 2"):
        server.start()
    last = server.log().strip().splitlines()[-1]
    assert last.startswith("ganserve serve: error: a worker could not load the models:") and "model.safetensors" in last
    time.sleep(0.5)
    assert _group_members(server.proc.pid) == []


def test_a_worker_that_dies_stops_the_server_with_an_error_and_no_process_left(model_dirs, tmp_path):
    """With the default worker count on the CPU (one per core), one of them is killed."""
    server = ServerProcess([model_dirs["stylegan"]], "--backend", "torch", "--device", "cpu", "--log-level", "warning",
                           log=tmp_path / "server.log").start()
    processes = server.descendants()
    workers = [p for p in processes if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert len(workers) == min(4, cpu_cores())
    assert httpx.get(f"{server.url}/health", timeout=10).json()["workers"] == len(workers)
    os.kill(workers[-1], signal.SIGKILL)
    assert server.proc.wait(30) == 2
    assert "an inference worker died" in server.log().strip().splitlines()[-1]
    time.sleep(0.5)
    assert [pid for pid in processes if alive(pid)] == []


def test_sigint_stops_a_server_whose_parent_ignored_sigint(model_dirs, tmp_path):
    """A shell without job control starts a background job with SIGINT ignored (`ganserve serve &` in a script, a
    CI runner), and the server inherits that; SIGINT to its group must still stop it."""
    server = ServerProcess([model_dirs["stylegan"]], "--device", "cpu", "--backend", "torch",
                           log=tmp_path / "server.log")
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        server.start()
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        processes = server.descendants()
        os.killpg(server.proc.pid, signal.SIGINT)
        try:
            server.proc.wait(60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the server ignored SIGINT:\n{server.log()[-2000:]}")
        assert server.proc.returncode == 0
        time.sleep(0.5)
        assert [pid for pid in processes if alive(pid)] == [], "processes left behind"
    finally:
        server.kill()


def test_the_default_server_on_the_cpu_runs_where_torch_cannot_be_imported(model_dirs, tmp_path):
    """With the default backend on the CPU (ONNX Runtime, its export in the cache) neither the server's main process
    nor its workers import torch: it serves, with torch made unimportable, the images `generate` makes in-process."""
    from ganserve.inference.registry import load_backend
    from ganserve.inference.sampling import make_specs

    backend = load_backend(model_dirs["stylegan"], "auto", "cpu")  # exports into the per-user cache if needed
    assert backend.name == "onnxruntime"
    expected = backend.generate(make_specs(backend.config, [42, 7], psi=0.7))
    env = torch_blocked_env(tmp_path)
    with ServerProcess([model_dirs["stylegan"]], "--device", "cpu", "--log-level", "warning", env=env,
                       log=tmp_path / "server.log") as s, httpx.Client(base_url=s.url, timeout=60) as http:
        models = http.get("/models").json()
        assert [m["backend"] for m in models["models"]] == ["onnxruntime"], models
        for k, seed in enumerate((42, 7)):
            r = http.get("/generate", params={"seed": seed, "psi": 0.7})
            assert r.status_code == 200 and r.headers["content-type"] == "image/png"
            assert np.array_equal(pixels(r.content), expected[k])
        # One request of 64 seeds keeps 2 x max batch x workers images in flight, each worker's fair share of them
        # above 8: on the CPU the default max batch of 8 (devices.default_batch_size) caps its batches, which are
        # full.
        r = http.post("/generate", json={"seeds": list(range(64))})
        assert r.status_code == 200, r.text
        sizes = [int(p.headers["x-batch-size"]) for p in parts_of(r)]
        assert len(sizes) == 64 and max(sizes) == 8, sizes
    assert "blocked by this test" not in (tmp_path / "server.log").read_text()
