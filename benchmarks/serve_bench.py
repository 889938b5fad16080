"""Serving benchmark: the in-process ceiling, `ganserve serve` (batched) and a naive server, loaded by locust.

Owns the measurement plan (ceiling per batch size; both servers per concurrency, levels interleaved, loopback only)
and its outputs in benchmarks/results: CSV, PNG plot, markdown table, machine description and the headline figures.

    python benchmarks/serve_bench.py [--model DIR_OR_NAME] [--backend auto] [--concurrency 1,2,4,8,16,32,64]
        [--duration 20] [--out benchmarks/results] [--name serve_cpu]
Headline (at --headline-concurrency, 32): efficiency = server images/s / ceiling images/s; batching gain = server /
naive images/s; batching headroom = in-process images/s at the best batch size / at batch 1.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the sibling scripts: backends.py (machine description), naive_server.py

from backends import machine  # noqa: E402

from ganserve.models.weights import bundled_models, resolve_model  # noqa: E402
from ganserve.serve.process import ServerProcess  # noqa: E402

LOCUSTFILE = HERE / "locustfile.py"
NAIVE_SERVER = HERE / "naive_server.py"
SERVERS = ("batched", "naive")
FIELDS = ["server", "concurrency", "images_per_s", "p50_ms", "p95_ms", "p99_ms", "mean_ms", "requests", "failures",
          "mean_batch", "batch_ms", "queue_ms", "encode_ms", "server_cores", "worker_cores", "locust_cores",
          "other_cores", "warmup_s", "window_s"]


def default_model() -> str:
    zoo = bundled_models()
    if not zoo:
        raise SystemExit(
            "serve_bench: no --model given and this installation bundles no model; pass a model directory, e.g. "
            "`ganserve init --arch stylegan --resolution 64 --z-dim 256 --w-dim 256 --fmap-base 2048 --fmap-max 256 "
            "--out /tmp/stylegan64` and then --model /tmp/stylegan64"
        )
    return next(iter(zoo))  # the one `ganserve serve` serves by default


# -- 1. the in-process ceiling ---------------------------------------------------------------------------------
def best_batch_size(rates: dict[int, float], limit: int | None = None) -> int:
    """The batch size with the highest images/s (the smaller of a tie) among those up to `limit`.

    The server takes it as its maximum. serve_bench limits it to headline concurrency / (2 x workers): at that load
    each worker then finds a full batch queued when it finishes one, instead of waiting for its own answers to come
    back as new requests (with every request on a worker at once). Under lighter load the batches stay smaller anyway,
    each worker taking only its fair share of the images in the server (ganserve.serve.litserve_glue.FairShare)."""
    allowed = {size: rate for size, rate in rates.items() if limit is None or size <= limit} or rates
    return max(allowed, key=lambda size: (allowed[size], -size))


def measure_ceiling(model: str, backend: str, device: str, workers: int, cpu_threads: int, encode_threads: int,
                    sizes: list[int], seconds: float, rounds: int, say) -> tuple[dict[int, dict], str]:
    """Images/s of generator + uint8 + PNG per batch size, with as many processes as the server has inference
    workers, each set up as a worker is (torch threads, backend) and all running the same batch size at once; PNGs
    are encoded on a thread pool while the next batch is generated, as in the server. Sizes take turns within each
    round; returns each round's images/s and batch latencies per size."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(workers), ctx.Queue()
    threads = max(1, math.ceil(encode_threads / workers))  # the server's one pool, shared out
    procs = [ctx.Process(target=_ceiling_worker, daemon=True,
                         args=(model, backend, device, cpu_threads, threads, sizes, seconds, rounds, barrier, results))
             for _ in range(workers)]
    for proc in procs:
        proc.start()
    say(f"ceiling: {workers} process(es), {cpu_threads} torch thread(s) and {threads} encode thread(s) each")
    cells: dict[tuple[int, int], list[tuple[float, float]]] = {}
    described, done = "", 0
    while done < workers:
        message = results.get(timeout=seconds * len(sizes) * rounds + 600)
        if message[0] == "error":
            raise SystemExit(f"serve_bench: the ceiling could not run: {message[1]}")
        if message[0] == "ready":
            described = message[1]
        elif message[0] == "cell":
            _, r, size, rate, latency = message
            cells.setdefault((r, size), []).append((rate, latency))
            if len(cells[(r, size)]) == workers and size == sizes[-1]:
                line = "  ".join(f"b{s} {sum(x[0] for x in cells[(r, s)]):.1f}" for s in sizes)
                say(f"ceiling round {r + 1}/{rounds}: {line} img/s")
        else:
            done += 1
    for proc in procs:
        proc.join(10)
    out: dict[int, dict] = {}
    for size in sizes:
        per_round = [cells[(r, size)] for r in range(rounds)]
        out[size] = {"rates": [sum(x[0] for x in c) for c in per_round],
                     "latencies": [x[1] for c in per_round for x in c]}
    return out, described


def combine_ceiling(*parts: dict[int, dict]) -> dict[int, dict]:
    """Median over all rounds of the ceiling measured before and after the servers."""
    out = {}
    for size in parts[0]:
        rates = [r for part in parts for r in part[size]["rates"]]
        latencies = [x for part in parts for x in part[size]["latencies"]]
        out[size] = {"images_per_s": statistics.median(rates), "batch_ms": 1000 * statistics.median(latencies),
                     "rounds": len(rates), "min_images_per_s": min(rates), "max_images_per_s": max(rates)}
    return out


def _ceiling_worker(model, backend, device, cpu_threads, encode_threads, sizes, seconds, rounds, barrier, results):
    try:
        from ganserve.devices import resolve_device, setup_cpu_inference
        from ganserve.imaging import encode
        from ganserve.inference.registry import load_backend
        from ganserve.inference.sampling import make_specs
        from ganserve.serve.encoding import PNG_LEVEL

        dev = resolve_device(device)
        if dev.type == "cpu":
            setup_cpu_inference(cpu_threads)  # as GeneratorWorker.setup does
        generator = load_backend(model, backend, str(dev))
    except Exception as e:  # noqa: BLE001 - reported in one line by the parent
        barrier.abort()
        results.put(("error", f"{type(e).__name__}: {e}".splitlines()[0]))
        return
    results.put(("ready", generator.describe()))
    pool = ThreadPoolExecutor(encode_threads)
    next_seed = [os.getpid() * 100_000]

    def batch(size: int):
        seeds = list(range(next_seed[0], next_seed[0] + size))
        next_seed[0] += size
        return generator.run_host(generator.prepare(make_specs(generator.config, seeds)))

    def encoded_at(pixels) -> float:
        encode(pixels, "png", PNG_LEVEL)
        return time.perf_counter()

    def run(size: int, budget: float) -> tuple[float, float]:
        """(images/s, median batch latency: from the start of its generation to its last PNG)."""
        started, images, latencies, pending = time.perf_counter(), 0, [], []
        while time.perf_counter() - started < budget or not images:
            t0 = time.perf_counter()
            pending.append((t0, [pool.submit(encoded_at, p) for p in batch(size)]))
            while len(pending) > 1 or (pending and time.perf_counter() - started >= budget):
                t, futures = pending.pop(0)  # one batch encodes while the next is generated
                latencies.append(max(f.result() for f in futures) - t)
                images += len(futures)
        return images / (time.perf_counter() - started), statistics.median(latencies)

    for size in sizes:  # warm-up: first calls allocate, pick kernels, import the encoder
        run(size, 0.0)
    for r in range(rounds):
        for size in sizes:
            barrier.wait()
            rate, latency = run(size, seconds)
            results.put(("cell", r, size, rate, latency))
    pool.shutdown()
    results.put(("done",))


# -- 2./3. the servers under locust ----------------------------------------------------------------------------
def start_servers(kinds: list[str], model: str, backend: str, device: str, workers: int, cpu_threads: int,
                  encode_threads: int, max_batch_size: int, batch_timeout_ms: float,
                  logdir: Path) -> dict[str, ServerProcess]:
    servers: dict[str, ServerProcess] = {}
    for kind in kinds:
        if kind == "batched":
            flags = ["--backend", backend, "--device", device, "--workers-per-device", str(workers),
                     "--cpu-threads", str(cpu_threads),
                     "--encode-threads", str(encode_threads), "--max-batch-size", str(max_batch_size),
                     "--batch-timeout-ms", str(batch_timeout_ms), "--log-level", "warning"]
            server = ServerProcess([model], *flags, log=logdir / "batched.log")
        else:
            server = ServerProcess([], log=logdir / "naive.log")
            server.args = [sys.executable, str(NAIVE_SERVER), model, "--backend", backend, "--device", device,
                           "--workers", str(workers), "--cpu-threads", str(cpu_threads), "--port", str(server.port)]
        servers[kind] = server
    with ThreadPoolExecutor(len(servers)) as pool:  # loading models takes a while: start them side by side
        starting = {kind: pool.submit(server.start, 300) for kind, server in servers.items()}
        failed = [f.exception() for f in starting.values() if f.exception() is not None]
    try:
        if failed:
            raise failed[0]
        for server in servers.values():
            warm_up(server)
    except BaseException:
        for server in servers.values():
            server.kill()
        raise
    return servers


def warm_up(server: ServerProcess) -> None:
    """A few requests: the first ones pay for lazy initialisation."""
    for seed in range(3):
        with urllib.request.urlopen(f"{server.url}/generate?seed={seed}", timeout=120) as r:
            r.read()


def describe_server(kind: str, server: ServerProcess) -> str:
    path = "/models" if kind == "batched" else "/health"
    with urllib.request.urlopen(server.url + path, timeout=10) as r:
        info = json.loads(r.read())
    return info["models"][0]["backend"] if kind == "batched" else info["describe"]


HISTOGRAMS = ("ganserve_batch_size", "ganserve_batch_seconds", "ganserve_queue_seconds", "ganserve_encode_seconds")


def histogram_totals(server: ServerProcess) -> dict[str, list[float]]:
    """[sum, count] of each of the server's HISTOGRAMS, all labels together, from /metrics."""
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {name: [0.0, 0.0] for name in HISTOGRAMS}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        base = name.split("{")[0]
        for suffix, k in (("_sum", 0), ("_count", 1)):
            if base.endswith(suffix) and base[: -len(suffix)] in out:
                out[base[: -len(suffix)]][k] += float(value.rsplit(" ", 1)[-1])
    return out


def histogram_means(before: dict, after: dict) -> dict[str, float]:
    means = {}
    for name in HISTOGRAMS:
        total, count = after[name][0] - before[name][0], after[name][1] - before[name][1]
        means[name] = total / count if count else 0.0
    return means


def cpu_seconds(pids: set[int]) -> float:
    """User + system CPU seconds of these processes so far (Linux /proc)."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


def inference_workers(pids: set[int]) -> set[int]:
    """Those of `pids` that are multiprocessing-spawned children (ganserve serve's inference workers)."""
    found = set()
    for pid in pids:
        try:
            if b"multiprocessing.spawn" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.add(pid)
        except OSError:
            pass
    return found


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy so far (all cores, all processes; Linux /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # less idle and iowait


def run_locust(url: str, users: int, warmup: float, duration: float, workdir: Path, max_requests: int) -> dict:
    """One headless locust run at `users` concurrency; statistics of the window after `warmup`."""
    prefix, report = workdir / f"c{users}", workdir / f"c{users}_cpu.json"
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", url,
           "-u", str(users), "-r", str(users), "-t", f"{math.ceil(warmup + duration)}s", "--csv", str(prefix),
           "--only-summary", "--loglevel", "WARNING", "--warmup-s", str(warmup), "--cpu-report", str(report),
           "--max-requests", str(max_requests), "--exit-code-on-error", "0"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=warmup + duration + 120)
    if out.returncode != 0:
        raise RuntimeError(f"locust failed ({out.returncode}):\n{out.stderr[-3000:]}")
    with open(f"{prefix}_stats.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    requests, failures = int(row["Request Count"]), int(row["Failure Count"])
    cpu = json.loads(report.read_text()) if report.exists() else {}
    window = cpu.get("wall_seconds", duration)
    return {"images_per_s": (requests - failures) / window if window else 0.0,
            "p50_ms": float(row["50%"] or 0), "p95_ms": float(row["95%"] or 0), "p99_ms": float(row["99%"] or 0),
            "mean_ms": round(float(row["Average Response Time"] or 0), 1), "requests": requests, "failures": failures,
            "locust_cores": cpu.get("cores", ""), "window_s": round(window, 2)}


def start_profile(pids: set[int], delay: float, seconds: float, workdir: Path) -> threading.Thread:
    """py-spy on each process, `seconds` long after `delay`, idle time included (so waits show), raw stacks."""

    def record():
        time.sleep(delay)
        procs = [subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))),
                                   "--idle", "--nonblocking", "--format", "raw", "-o", str(workdir / f"{pid}.txt")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for pid in pids]
        for proc in procs:
            proc.wait(seconds + 60)

    thread = threading.Thread(target=record, daemon=True)
    thread.start()
    return thread


def summarise_profile(workdir: Path, title: str, main_pid: int | None) -> str:
    """Per process and thread: the share of its samples in each of its hottest frames (ours and LitServe's first)."""
    out = [title, ""]
    for path in sorted(workdir.glob("*.txt")):
        threads: dict[str, Counter] = {}
        totals: Counter = Counter()
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frames = stack.split(";")
            thread = frames[0].split(" (")[0]
            totals[thread] += int(count)
            seen = threads.setdefault(thread, Counter())
            for frame in dict.fromkeys(frames):
                seen[frame] += int(count)
            seen["leaf: " + frames[-1]] += int(count)
        text = path.read_text()
        role = ("inference worker" if "inference_worker" in text else "API process" if "uvicorn" in text
                else "main process" if path.stem == str(main_pid) else "manager" if "managers.py" in text
                else "other")
        out.append(f"## process {path.stem} ({role})")
        for thread, total in totals.most_common():
            if total < 20:
                continue
            out.append(f"  thread {thread}: {total} samples")
            shown = 0
            for frame, n in threads[thread].most_common():
                interesting = frame.startswith("leaf: ") or "ganserve/" in frame or "litserve/" in frame
                if interesting and n < total:
                    out.append(f"    {100 * n / total:5.1f}%  {frame[:150]}")
                    shown += 1
                if shown >= 14:
                    break
        out.append("")
    return "\n".join(out) + "\n"


def measure_servers(servers: dict[str, ServerProcess], levels: list[int], duration: float, warmup: float | None,
                    estimate: float, max_requests: int, workdir: Path, say,
                    profile_at: int | None = None) -> tuple[list[dict], str]:
    """Each concurrency level for each server, the servers taking turns level by level (so that a burst of load
    from elsewhere on the machine hits them alike); only the server being measured is under load."""
    rows, rate, profile = [], dict.fromkeys(servers, estimate), ""
    for users in levels:
        for kind, server in servers.items():
            # Closed loop: a request takes about users / rate seconds; warm up for about two of those.
            wait = warmup if warmup is not None else min(15.0, max(2.0, 2 * users / max(rate[kind], 0.1)))
            pids = server.descendants()
            workers = inference_workers(pids) if kind == "batched" else set()  # the naive server's do everything
            cpu0, wall0, machine0 = cpu_seconds(pids), time.monotonic(), machine_busy()
            worker_cpu0 = cpu_seconds(workers)
            histograms0 = histogram_totals(server) if kind == "batched" else None
            stats = run_locust(server.url, users, wait, duration, workdir / kind, max_requests)
            elapsed = time.monotonic() - wall0
            server_cores = (cpu_seconds(pids) - cpu0) / elapsed
            worker_cores = (cpu_seconds(workers) - worker_cpu0) / elapsed if workers else None
            busy = (machine_busy() - machine0) / elapsed  # every process on the machine, ours included
            inside = {"mean_batch": 1.0}  # the naive server runs one image per forward
            if histograms0 is not None:  # the whole level, warm-up included
                means = histogram_means(histograms0, histogram_totals(server))
                inside = {"mean_batch": round(means["ganserve_batch_size"], 2),
                          "batch_ms": round(1000 * means["ganserve_batch_seconds"], 1),
                          "queue_ms": round(1000 * means["ganserve_queue_seconds"], 1),
                          "encode_ms": round(1000 * means["ganserve_encode_seconds"], 2)}
            mean_batch = inside["mean_batch"]
            rate[kind] = stats["images_per_s"] or rate[kind]
            others = max(0.0, busy - server_cores - (stats["locust_cores"] or 0.0))
            rows.append({"server": kind, "concurrency": users, **stats, **inside,
                         "server_cores": round(server_cores, 2), "other_cores": round(others, 2),
                         "worker_cores": round(worker_cores, 2) if worker_cores is not None else "",
                         "warmup_s": round(wait, 1)})
            of_workers = f" (workers {worker_cores:.2f})" if worker_cores is not None else ""
            say(f"{kind:>7} c={users:<3d} {stats['images_per_s']:7.1f} img/s  p50 {stats['p50_ms']:6.0f}  "
                f"p95 {stats['p95_ms']:6.0f}  p99 {stats['p99_ms']:6.0f} ms  failures {stats['failures']}  "
                f"batch {mean_batch:5.2f}  cores: server {server_cores:.2f}{of_workers}, "
                f"locust {stats['locust_cores']}, others {others:.2f}")
    if profile_at is not None and "batched" in servers:  # a run of its own: py-spy takes CPU from what it watches
        server = servers["batched"]
        wait = min(15.0, max(2.0, 2 * profile_at / max(rate["batched"], 0.1)))
        say(f"profiling ganserve serve at concurrency {profile_at} (not part of the figures)")
        (workdir / "profile").mkdir(exist_ok=True)
        profiler = start_profile(server.descendants(), wait + 2, duration - 3, workdir / "profile")
        run_locust(server.url, profile_at, wait, duration, workdir / "profile", max_requests)
        profiler.join(90)
        profile = summarise_profile(workdir / "profile", f"py-spy, ganserve serve at concurrency {profile_at}, "
                                    f"{duration - 3:.0f} s after a {wait:.0f} s warm-up, idle time included",
                                    server.proc.pid if server.proc else None)
    return rows, profile


def measure_paired(server: ServerProcess, rounds: int, users: int, size: int, duration: float, ceiling_seconds: float,
                   ceiling_at, workdir: Path, say) -> list[dict]:
    """The ceiling at `size` and the server at `users`, one right after the other, `rounds` times: a shared machine
    that slows down for a few minutes then slows both sides of each ratio alike (the sweep's ceiling rounds run
    minutes before and after the server's headline level)."""
    out = []
    for r in range(rounds):
        ceiling = ceiling_at(size, ceiling_seconds)
        stats = run_locust(server.url, users, min(15.0, max(2.0, 2 * users / max(ceiling, 0.1))), duration,
                           workdir / "batched", 10**9)
        served = stats["images_per_s"]
        out.append({"round": r + 1, "batch": size, "ceiling_images_per_s": ceiling, "server_images_per_s": served,
                    "ratio": served / ceiling if ceiling else 0.0})
        say(f"paired round {r + 1}/{rounds}: ceiling (batch {size}) {ceiling:.1f} img/s, server at c={users} "
            f"{served:.1f} img/s: {out[-1]['ratio']:.2f}")
    return out


# -- 4. results ------------------------------------------------------------------------------------------------
def headline(rows: list[dict], ceiling: dict[int, dict], at: int, paired: list[dict] | None = None) -> dict:
    best = max(ceiling, key=lambda s: ceiling[s]["images_per_s"])
    at = at if any(r["concurrency"] == at for r in rows) else max(r["concurrency"] for r in rows)

    def get(kind: str, users: int) -> dict | None:
        return next((r for r in rows if r["server"] == kind and r["concurrency"] == users), None)

    out: dict = {"concurrency": at, "ceiling_images_per_s": ceiling[best]["images_per_s"], "best_batch": best}
    batched, naive = get("batched", at), get("naive", at)
    out["headroom"] = ceiling[best]["images_per_s"] / ceiling[1]["images_per_s"] if 1 in ceiling else None
    if batched:
        out["server_images_per_s"] = batched["images_per_s"]
        out["efficiency"] = batched["images_per_s"] / ceiling[best]["images_per_s"]
    if paired:
        out["efficiency_sweep"] = out.get("efficiency")
        out["efficiency"] = statistics.median(p["ratio"] for p in paired)
        out["paired"] = paired
    if naive:
        out["naive_images_per_s"] = naive["images_per_s"]
    if batched and naive and naive["images_per_s"] > 0:
        out["gain"] = batched["images_per_s"] / naive["images_per_s"]
    one, eight = get("batched", 1), get("batched", 8)
    if one and eight:
        out["p99_c8_ms"], out["p50_c1_ms"] = eight["p99_ms"], one["p50_ms"]
        out["latency_ratio"] = eight["p99_ms"] / one["p50_ms"] if one["p50_ms"] else None
    return out


def targets(h: dict) -> list[tuple[str, bool | None]]:
    """(description, met) for each target of the issue; None where this run cannot tell."""
    out = []
    if "efficiency" in h:
        how = f" (median of {len(h['paired'])} paired rounds)" if h.get("paired") else ""
        out.append((f"efficiency {h['efficiency']:.2f}{how} >= 0.8", h["efficiency"] >= 0.8))
    if h.get("latency_ratio") is not None:
        out.append((f"p99 at c=8 ({h['p99_c8_ms']:.0f} ms) <= 3 x p50 at c=1 ({h['p50_c1_ms']:.0f} ms): "
                    f"{h['latency_ratio']:.2f} x", h["latency_ratio"] <= 3))
    if "gain" in h and h["headroom"]:
        need = max(0.8 * h["headroom"], min(1.5, h["headroom"]))
        out.append((f"batching gain {h['gain']:.2f} >= {need:.2f} (0.8 x headroom {h['headroom']:.2f}, "
                    "and 1.5 where the headroom allows)", h["gain"] >= need))
    return out


def headline_lines(h: dict) -> list[str]:
    lines = [f"ceiling {h['ceiling_images_per_s']:.1f} img/s (batch {h['best_batch']})"]
    if "server_images_per_s" in h:
        lines.append(f"server at c={h['concurrency']}: {h['server_images_per_s']:.1f} img/s")
    if "naive_images_per_s" in h:
        lines.append(f"naive at c={h['concurrency']}: {h['naive_images_per_s']:.1f} img/s")
    if "efficiency" in h:
        lines.append(f"efficiency {h['efficiency']:.2f}" + (" (paired)" if h.get("paired") else ""))
    if h.get("efficiency_sweep") is not None:
        lines.append(f"efficiency from the sweep {h['efficiency_sweep']:.2f}")
    if "gain" in h:
        lines.append(f"batching gain {h['gain']:.2f}x")
    if h.get("headroom"):
        lines.append(f"batching headroom {h['headroom']:.2f}x")
    return lines


def markdown(rows, ceiling, h, info, setup, command) -> str:
    out = ["# Serving benchmark", "", f"Command: `{command}`", "",
           "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), "",
           "Setup: " + ", ".join(f"{k} {v}" for k, v in setup.items()), "",
           f"## Headline (concurrency {h['concurrency']})", "", "| figure | value |", "|---|---:|"]
    out.append(f"| in-process ceiling (batch {h['best_batch']}) | {h['ceiling_images_per_s']:.1f} img/s |")
    for key, label in (("server_images_per_s", "ganserve serve"), ("naive_images_per_s", "naive server")):
        if key in h:
            out.append(f"| {label} | {h[key]:.1f} img/s |")
    for key, label, fmt in (("efficiency", "**efficiency** (server / ceiling" +
                             (", median of the paired rounds)" if h.get("paired") else ")"), "{:.2f}"),
                            ("efficiency_sweep", "efficiency from the sweep (server level / ceiling rounds)", "{:.2f}"),
                            ("gain", "**batching gain** (server / naive)", "{:.2f}×"),
                            ("headroom", "**batching headroom** (ceiling best batch / batch 1)", "{:.2f}×")):
        if h.get(key) is not None:
            out.append(f"| {label} | {fmt.format(h[key])} |")
    if h.get("paired"):
        out += ["", f"Paired rounds (ceiling at batch {h['paired'][0]['batch']}, then the server at concurrency "
                f"{h['concurrency']}, right after each other):", "", "| round | ceiling img/s | server img/s | ratio |",
                "|---:|---:|---:|---:|"]
        out += [f"| {p['round']} | {p['ceiling_images_per_s']:.1f} | {p['server_images_per_s']:.1f} | "
                f"{p['ratio']:.2f} |" for p in h["paired"]]
    out += ["", "Targets:", ""] + [f"- {'met' if ok else 'MISSED'}: {text}" for text, ok in targets(h)]
    out += ["", "## In-process ceiling", "", "generator + uint8 + PNG, encoding overlapped with the next batch "
            "(as in the server), median of the rounds", "", "| batch | images/s | batch latency (ms) |",
            "|---:|---:|---:|"]
    out += [f"| {s} | {c['images_per_s']:.1f} | {c['batch_ms']:.0f} |" for s, c in sorted(ceiling.items())]
    kinds = list(dict.fromkeys(r["server"] for r in rows))

    def row(kind: str, users: int) -> dict | None:
        return next((x for x in rows if x["server"] == kind and x["concurrency"] == users), None)

    levels = sorted({r["concurrency"] for r in rows})
    out += ["", "## Under load", "", "locust on the same machine, one request in flight per user (closed loop), "
            "GET /generate with random seeds; statistics after each level's warm-up.", "",
            "| concurrency | " + " | ".join(f"{k} img/s | {k} p50 / p95 / p99 ms" for k in kinds)
            + " | mean batch | failures |", "|---:|" + "---:|---:|" * len(kinds) + "---:|---:|"]
    for users in levels:
        cells, failures = [], 0
        for kind in kinds:
            r = row(kind, users)
            cells += [f"{r['images_per_s']:.1f}", f"{r['p50_ms']:.0f} / {r['p95_ms']:.0f} / {r['p99_ms']:.0f}"] if r \
                else ["", ""]
            failures += r["failures"] if r else 0
        batched = row("batched", users)
        mean_batch = f"{batched['mean_batch']:.2f}" if batched else ""
        out.append(f"| {users} | " + " | ".join(cells) + f" | {mean_batch} | {failures} |")
    inside = [r for r in rows if r["server"] == "batched" and r.get("batch_ms")]
    if inside:
        out += ["", "Inside ganserve serve (its /metrics over each level, warm-up included): images per device batch, "
                "time per batch (generator + copy to the host), the generator's images/s while busy, queue wait and "
                "PNG time per image.", "",
                "| concurrency | mean batch | batch ms | generator img/s while busy | queue ms | encode ms |",
                "|---:|---:|---:|---:|---:|---:|"]
        out += [f"| {r['concurrency']} | {r['mean_batch']:.2f} | {r['batch_ms']:.0f} | "
                f"{1000 * r['mean_batch'] / r['batch_ms']:.1f} | {r['queue_ms']:.0f} | {r['encode_ms']:.2f} |"
                for r in inside]
    out += ["", "CPU used during each level, in cores (of the machine's "
            f"{info.get('cores_available', '?')}): the server's processes (ganserve serve's inference workers in "
            "brackets; the rest is its HTTP process) / the locust client / everything else on the machine.", "",
            "| concurrency | " + " | ".join(kinds) + " |", "|---:|" + "---:|" * len(kinds)]
    for users in levels:
        cells = []
        for kind in kinds:
            r = row(kind, users)
            if r:
                workers = f" ({r['worker_cores']:.2f})" if r.get("worker_cores") not in (None, "") else ""
                cells.append(f"{r['server_cores']:.2f}{workers} / {r['locust_cores']} / {r['other_cores']:.2f}")
            else:
                cells.append("")
        out.append(f"| {users} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def plot(rows: list[dict], ceiling: dict[int, dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    levels = sorted({r["concurrency"] for r in rows})
    sizes = [s for s in sorted(ceiling) if s <= max(levels)]
    best = max(ceiling.values(), key=lambda c: c["images_per_s"])["images_per_s"]
    ax1.axhline(best, color="0.5", lw=1, ls=":", label=f"ceiling: best batch size ({best:.1f} img/s)")
    ax1.plot(sizes, [ceiling[s]["images_per_s"] for s in sizes], "k--", marker=".",
             label="in-process, every process at batch size x")
    ax2.plot(sizes, [ceiling[s]["batch_ms"] for s in sizes], "k--", marker=".",
             label="in-process, one batch of size x")
    for kind, label in (("batched", "ganserve serve (batched)"), ("naive", "naive server (no batching)")):
        pts = sorted((r["concurrency"], r["images_per_s"], r["p99_ms"]) for r in rows if r["server"] == kind)
        if pts:
            ax1.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
            ax2.plot([p[0] for p in pts], [p[2] for p in pts], marker="o", label=f"{label}, p99")
    for ax, ylabel in ((ax1, "images / s"), (ax2, "latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(x) for x in levels])
        ax.set_xlabel("concurrency (requests in flight) / batch size")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    ax2.set_yscale("log")
    ax1.set_ylim(bottom=0)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="model directory or bundled name (default: the bundled default model)")
    p.add_argument("--backend", default="auto", help="as `ganserve serve --backend` (default auto)")
    p.add_argument("--device", default="auto")
    p.add_argument("--concurrency", default="1,2,4,8,16,32,64", help="comma list of locust user counts")
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds per level (after the warm-up)")
    p.add_argument("--warmup", type=float, help="seconds before each level's statistics start (default: ~2 requests)")
    p.add_argument("--max-requests", type=int, default=100_000, help="cap on requests per level")
    p.add_argument("--servers", default="batched,naive", help="which servers to load: batched, naive or both")
    p.add_argument("--ceiling-batch-sizes", default="1,2,4,8,16,32,64")
    p.add_argument("--ceiling-seconds", type=float, default=3.0, help="per batch size and round")
    p.add_argument("--ceiling-rounds", type=int, default=4, help="half before the servers, half after")
    p.add_argument("--max-batch-size", default="best",
                   help="the server's: an integer, or best (default): the ceiling's fastest batch size up to "
                        "headline concurrency / (2 x workers), measured first")
    p.add_argument("--batch-timeout-ms", type=float, default=5.0, help="the server's (default: as `ganserve serve`)")
    p.add_argument("--workers", type=int, default=1,
                   help="inference processes: the server's --workers-per-device, the naive server's and the ceiling's")
    p.add_argument("--cpu-threads", type=int, help="torch threads, everywhere (default: as `ganserve serve`)")
    p.add_argument("--encode-threads", type=int, help="PNG threads, everywhere (default: as `ganserve serve`)")
    p.add_argument("--headline-concurrency", type=int, default=32)
    p.add_argument("--paired-rounds", type=int, default=3,
                   help="rounds of ceiling (best batch size) and server at the headline concurrency taken in turn, "
                        "right after each other; the efficiency is the median of their ratios (0: from the sweep)")
    p.add_argument("--profile", action="store_true",
                   help="py-spy the server at the headline concurrency; writes NAME_profile.txt (pip install py-spy)")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--name", help="file name stem (default serve_DEVICE)")
    args = p.parse_args(argv)

    from ganserve.devices import cpu_threads_per_worker, resolve_device
    from ganserve.serve.encoding import default_threads

    model = args.model or default_model()
    model_dir = resolve_model(model)
    device = resolve_device(args.device)
    cpu_threads = args.cpu_threads or cpu_threads_per_worker(args.workers)  # `ganserve serve`'s
    encode_threads = args.encode_threads or default_threads()
    levels = [int(c) for c in args.concurrency.split(",")]
    kinds = [k.strip() for k in args.servers.split(",") if k.strip()]
    if not set(kinds) <= set(SERVERS):
        p.error(f"--servers: choose from {', '.join(SERVERS)}")
    say = lambda line: print(line, flush=True)  # noqa: E731
    info = {**machine(), **_versions()}
    say("machine: " + json.dumps(info))
    say(f"model {model_dir}, backend {args.backend}, device {device}")

    sizes = [int(s) for s in args.ceiling_batch_sizes.split(",")]
    if 1 not in sizes:
        sizes.insert(0, 1)  # the headroom is relative to batch 1

    def ceiling_part(rounds: int, at: list[int] = sizes, seconds: float = args.ceiling_seconds) -> tuple[dict, str]:
        return measure_ceiling(str(model_dir), args.backend, str(device), args.workers, cpu_threads, encode_threads,
                               at, seconds, rounds, say)

    def ceiling_at(size: int, seconds: float) -> float:  # one round at one batch size: images/s
        return ceiling_part(1, [size], seconds)[0][size]["rates"][0]

    # Half the ceiling's rounds before the servers and half after, so that a drift in the machine's load shows.
    before, ceiling_backend = ceiling_part(max(1, args.ceiling_rounds // 2))
    estimate = statistics.median(before[min(sizes)]["rates"])
    before_rates = {size: statistics.median(before[size]["rates"]) for size in sizes}
    if args.max_batch_size == "best":
        limit = max(1, args.headline_concurrency // (2 * args.workers))
        max_batch_size = best_batch_size(before_rates, limit)
        say(f"the server's --max-batch-size: {max_batch_size}, the fastest batch size in-process up to {limit} "
            f"(concurrency {args.headline_concurrency} / (2 x {args.workers} workers))")
    else:
        max_batch_size = int(args.max_batch_size)
    rows, described, profile, paired = [], {}, "", []
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        workdir = Path(tmp)
        for kind in kinds:
            (workdir / kind).mkdir()
        servers: dict[str, ServerProcess] = {}
        try:
            say(f"starting {', '.join(kinds)} on 127.0.0.1")
            servers = start_servers(kinds, str(model_dir), args.backend, args.device, args.workers, cpu_threads,
                                    encode_threads, max_batch_size, args.batch_timeout_ms, workdir)
            described = {k: describe_server(k, s) for k, s in servers.items()}
            say("servers: " + ", ".join(f"{k} at {s.url} ({described[k]})" for k, s in servers.items()))
            profile_at = args.headline_concurrency if args.profile else None
            rows, profile = measure_servers(servers, levels, args.duration, args.warmup, estimate, args.max_requests,
                                            workdir, say, profile_at)
            if "batched" in servers and args.paired_rounds > 0:
                paired = measure_paired(servers["batched"], args.paired_rounds, args.headline_concurrency,
                                        best_batch_size(before_rates), args.duration, args.ceiling_seconds * 2,
                                        ceiling_at, workdir, say)
        finally:
            for server in servers.values():
                try:
                    server.stop()
                finally:
                    server.kill()

    parts = [before]
    if args.ceiling_rounds > 1:
        say("ceiling again, after the servers")
        parts.append(ceiling_part(args.ceiling_rounds - args.ceiling_rounds // 2)[0])
    ceiling = combine_ceiling(*parts)

    from ganserve.models.weights import load_config

    config = load_config(model_dir)
    setup = {"model": f"{model} ({config.arch} {config.resolution}x{config.resolution}, z {config.z_dim}, "
                      f"w {config.w_dim}, fmap_base {config.fmap_base}, fmap_max {config.fmap_max})",
             "ceiling backend": ceiling_backend, **{f"{k} backend": v for k, v in described.items()},
             "inference processes": args.workers, "torch threads each": cpu_threads,
             "encode threads": encode_threads,
             "server max batch size": max_batch_size, "batch timeout ms": args.batch_timeout_ms,
             "measured s per level": args.duration}
    h = headline(rows, ceiling, args.headline_concurrency, paired)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = args.name or f"serve_{device.type}"
    with open(out / f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({**r, "images_per_s": round(r["images_per_s"], 2)} for r in rows)
    with open(out / f"{stem}_ceiling.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["batch_size", "images_per_s", "min_images_per_s", "max_images_per_s", "rounds", "batch_ms"])
        writer.writerows([s, round(c["images_per_s"], 2), round(c["min_images_per_s"], 2),
                          round(c["max_images_per_s"], 2), c["rounds"], round(c["batch_ms"], 1)]
                         for s, c in sorted(ceiling.items()))
    command = "python benchmarks/serve_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    (out / f"{stem}.md").write_text(markdown(rows, ceiling, h, info, setup, command))
    (out / f"{stem}_machine.json").write_text(json.dumps({**info, "setup": setup, "headline": h}, indent=2) + "\n")
    try:
        plot(rows, ceiling, out / f"{stem}.png", f"{setup['model']} on {info['cpu']} ({device.type})")
    except ImportError:
        say("matplotlib is not installed (pip install 'ganserve[bench]'): no plot")
    if profile:
        (out / f"{stem}_profile.txt").write_text(profile)
    say(f"wrote {out / stem}.csv/_ceiling.csv/.md/.png/_machine.json" + (" and _profile.txt" if profile else ""))
    for text, ok in targets(h):
        say(f"target {'met' if ok else 'MISSED'}: {text}")
    say("headline: " + "; ".join(headline_lines(h)))
    return 0


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("litserve", "fastapi", "uvicorn", "pillow", "locust"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    out["load_average_at_start"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return out


if __name__ == "__main__":
    sys.exit(main())
