"""The serving benchmark scripts work end to end: the naive baseline does the server's work, serve_bench writes results.

Tiny model, a few seconds of load; what needs locust skips when it is not installed (pip install 'ganserve[bench]').
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ganserve.inference.registry import load_backend
from ganserve.inference.sampling import make_spec

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
needs_locust = pytest.mark.skipif(importlib.util.find_spec("locust") is None,
                                  reason="locust is not installed (pip install 'ganserve[bench]')")


@pytest.fixture(scope="module")
def naive_server():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import naive_server
    finally:
        sys.path.remove(str(BENCHMARKS))
    return naive_server


def test_naive_server_returns_the_same_pixels_as_the_backend(model_dirs, naive_server):
    from fastapi.testclient import TestClient

    model = model_dirs["stylegan"]
    with TestClient(naive_server.build_app(model, backend="torch", device="cpu")) as client:
        r = client.get("/generate", params={"seed": 42})
        assert client.get("/generate", params={"seed": -1}).status_code == 422
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.headers["x-seed"] == "42"
    backend = load_backend(model, "torch", "cpu")
    expected = backend.generate([make_spec(backend.config, 42)])[0]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB")), expected)


@needs_locust
@pytest.mark.slow
def test_serve_bench_measures_both_servers_and_writes_every_result(model_dirs, tmp_path):
    cmd = [sys.executable, str(BENCHMARKS / "serve_bench.py"), "--model", model_dirs["stylegan"], "--backend", "torch",
           "--device", "cpu", "--concurrency", "1,2", "--duration", "1.5", "--warmup", "0.3",
           "--ceiling-batch-sizes", "1,4", "--ceiling-seconds", "0.2", "--ceiling-rounds", "2",
           "--headline-concurrency", "2", "--paired-rounds", "1", "--out", str(tmp_path), "--name", "t"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1].startswith("headline: ceiling ")
    with open(tmp_path / "t.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {(r["server"], r["concurrency"]) for r in rows} == {(s, c) for s in ("batched", "naive") for c in "12"}
    for r in rows:
        assert float(r["images_per_s"]) > 0 and int(r["failures"]) == 0 and int(r["requests"]) > 0
        assert 0 < float(r["p50_ms"]) <= float(r["p99_ms"])
        assert 0 <= float(r["locust_cores"]) < 2
    for r in rows:  # the inference workers' share of the server's CPU: part of it, and only for ganserve serve
        if r["server"] == "batched":
            assert float(r["mean_batch"]) >= 1 and 0 < float(r["worker_cores"]) <= float(r["server_cores"]) + 0.05
        else:
            assert r["worker_cores"] == ""
    with open(tmp_path / "t_ceiling.csv", newline="") as f:
        assert [r["batch_size"] for r in csv.DictReader(f)] == ["1", "4"]
    text = (tmp_path / "t.md").read_text()
    assert "**efficiency**" in text and "**batching gain**" in text and "**batching headroom**" in text
    assert "Paired rounds" in text and "efficiency from the sweep" in text
    headline = json.loads((tmp_path / "t_machine.json").read_text())["headline"]
    assert len(headline["paired"]) == 1 and headline["efficiency"] == headline["paired"][0]["ratio"] > 0
    assert (tmp_path / "t.png").stat().st_size > 0


def test_serve_bench_without_a_model_takes_the_default_bundled_one_or_says_how_to_make_one(tmp_path, monkeypatch):
    import ganserve.models.weights as weights

    sys.path.insert(0, str(BENCHMARKS))
    try:
        import serve_bench
    finally:
        sys.path.remove(str(BENCHMARKS))
    zoo = tmp_path / "zoo"  # a zoo where the default model does not sort first by name
    for name in ("aaa-first-by-name", weights.DEFAULT_MODEL):
        (zoo / name).mkdir(parents=True)
        (zoo / name / weights.CONFIG_NAME).write_text("{}")
    monkeypatch.setattr(weights, "ZOO_DIR", zoo)
    assert serve_bench.default_model() == weights.DEFAULT_MODEL == next(iter(weights.bundled_models()))
    monkeypatch.setattr(weights, "ZOO_DIR", tmp_path / "no-zoo")  # an installation without bundled models
    with pytest.raises(SystemExit, match="bundles no model.*ganserve init"):
        serve_bench.default_model()


def test_best_batch_size_is_the_fastest_up_to_the_limit_and_the_smaller_of_a_tie():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import serve_bench
    finally:
        sys.path.remove(str(BENCHMARKS))
    assert serve_bench.best_batch_size({1: 100.0, 2: 190.0, 4: 228.0, 8: 238.0, 16: 231.0}) == 8
    assert serve_bench.best_batch_size({1: 100.0, 2: 150.0, 4: 240.0, 8: 240.0, 64: 200.0}) == 4
    assert serve_bench.best_batch_size({1: 50.0}) == 1
    rates = {1: 100.0, 2: 190.0, 4: 228.0, 8: 238.0, 16: 241.0, 32: 235.0}
    assert serve_bench.best_batch_size(rates) == 16
    assert serve_bench.best_batch_size(rates, limit=8) == 8  # a full batch queued per worker at the headline load
    assert serve_bench.best_batch_size({4: 10.0, 8: 20.0}, limit=2) == 8  # nothing allowed: all sizes are


@needs_locust
@pytest.mark.slow
def test_serve_ab_runs_two_checkouts_and_refuses_a_tree_that_is_not_one(model_dirs, tmp_path):
    tree = str(BENCHMARKS.parent)
    cmd = [sys.executable, str(BENCHMARKS / "serve_ab.py"), "--a", tree, "--b", tree, "--model", model_dirs["stylegan"],
           "--workers", "1", "--concurrency", "2", "--duration", "1.5", "--warmup", "0.3", "--rounds", "1",
           "--", "--device", "cpu"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line for line in out.stdout.splitlines() if line.startswith("| A") or
            line.startswith("| B")}
    assert set(rows) == {"A", "B"}
    images_per_s = [float(rows[k].split("|")[2]) for k in ("A", "B")]
    assert all(x > 0 for x in images_per_s)
    assert "B / A images/s: " in out.stdout
    # A folder without ganserve in it: the installed package would be served instead, so it is refused.
    out = subprocess.run([*cmd[:3], str(tmp_path), *cmd[4:]], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "ganserve still comes from" in out.stderr


def test_soak_counts_statuses_samples_every_process_and_checks_recovery(model_dirs, tmp_path):
    cmd = [sys.executable, str(BENCHMARKS / "soak.py"), "--model", model_dirs["stylegan"], "--duration", "4",
           "--clients", "24", "--max-queue", "4", "--cooldown", "1", "--abort-fraction", "0.2",
           "--server-arg=--max-batch-size=2", "--out", str(tmp_path), "--name", "s"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "soak: t=" in out.stdout and "plateau" in out.stdout.splitlines()[-1]
    summary = json.loads((tmp_path / "s.json").read_text())
    responses = summary["responses"]
    assert responses["200"] > 0 and responses["503_with_retry_after"] > 0 and responses["failures"] == {}
    assert summary["recovery"]["recovered"] and summary["recovery"]["queue_depth"] == 0
    assert {"api", "main", "manager", "worker0", "worker1"} <= set(summary["memory_mb"])
    assert summary["machine"]["cpu"] and summary["machine"]["torch"]
    with open(tmp_path / "s.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["phase"] for r in rows} == {"load", "cooldown"}
    assert all(float(r["api_rss"]) > 0 and float(r["total_rss"]) >= float(r["worker0_rss"]) for r in rows)
    assert (tmp_path / "s.png").stat().st_size > 0


def test_soak_plateau_compares_the_last_third_of_the_load_with_the_middle_third():
    sys.path.insert(0, str(BENCHMARKS))
    from soak import plateau

    flat = [{"phase": "load", "m": 100.0 + (10 if i < 10 else 0)} for i in range(30)]  # warm-up in the first third
    growing = [{"phase": "load", "m": 100.0 + i} for i in range(30)]
    cooldown = [{"phase": "cooldown", "m": 1000.0}]  # not part of the verdict
    assert plateau(flat + cooldown, ["m"], 3.0)["plateau"]
    verdict = plateau(growing, ["m"], 3.0)
    assert not verdict["plateau"] and verdict["series"]["m"]["growth_pct"] == round(100 * 10 / 114.5, 2)


def _processes_with(marker: str) -> list[str]:
    """Command lines of the processes whose environment holds `marker` (what a benchmark started and left behind)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/environ").read_bytes():
                found.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200])
        except OSError:
            pass
    return found


def test_peers_measures_ganserve_and_litserve_writes_csv_and_plot_and_leaves_no_process(model_dirs, tmp_path):
    marker = f"GANSERVE_PEERS_TEST={uuid.uuid4().hex}"
    csv_path, png = tmp_path / "peers.csv", tmp_path / "peers.png"
    cmd = [sys.executable, str(BENCHMARKS / "peers.py"), "--peers", "litserve", "--model", model_dirs["stylegan"],
           "--workers", "1", "--concurrency", "1,2", "--duration", "1", "--warmup", "0.3", "--rounds", "2",
           "--idle-seconds", "0.5", "--csv", str(csv_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=240,
                         env={**os.environ, marker.split("=")[0]: marker.split("=")[1]})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "# idle CPU use, cores: ganserve " in out.stdout
    rows = [line for line in out.stdout.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert len(rows) == 2
    with open(csv_path) as f:
        table = list(csv.DictReader(f))
    expected = {(server, clients) for server in ("ganserve", "litserve") for clients in (1, 2)}
    assert {(r["server"], int(r["clients"])) for r in table} == expected
    assert all(float(r["images_per_s"]) > 0 and float(r["p99_ms"]) >= float(r["p50_ms"]) > 0 for r in table)
    assert {r["model"] for r in table} == {Path(model_dirs["stylegan"]).name}
    # every server process is gone, LitServe's workers included (they outlived a SIGTERM to its main process)
    deadline = time.monotonic() + 20
    while (left := _processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, left

    out = subprocess.run([sys.executable, str(BENCHMARKS / "peers.py"), "--plot", str(png), "--from", str(csv_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert Image.open(png).size[0] > 500

    # Ray from an interpreter without it: a clear error before any server starts
    no_ray = subprocess.run([sys.executable, str(BENCHMARKS / "peers.py"), "--peers", "ray", "--ray-python",
                             sys.executable + "-missing"], capture_output=True, text=True, timeout=60)
    assert no_ray.returncode == 2 and "cannot import ray.serve and ganserve" in no_ray.stderr


@needs_locust
def test_bulk_vs_serve_times_the_command_and_the_server(model_dirs):
    cmd = [sys.executable, str(BENCHMARKS / "bulk_vs_serve.py"), "--model", model_dirs["stylegan"], "--seeds", "24",
           "--concurrency", "2", "--warmup", "1", "--duration", "3", "--rounds", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("medians: generate ") and "generate / serve " in last
    generate, serve = (float(part.split()[-2]) for part in last.split(": ", 1)[1].split(", ")[:2])
    assert generate > 0 and serve > 0
