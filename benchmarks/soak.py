"""Soak under overload: `ganserve serve` driven at several times its capacity for minutes, its memory watched.

Owns the load (many closed-loop clients on loopback, each request bounded in time, the whole run bounded in time and
count), the memory samples of the server's whole process tree (RSS, USS, PSS of each process and their sums, every
second), the status-code tally (200; 503 with Retry-After; anything else is a failure), the recovery check after
the load, the plateau verdict and the outputs in benchmarks/results: NAME.csv, NAME.png, NAME.json.

    python benchmarks/soak.py [--duration 240] [--clients 256] [--max-queue 64] [--out benchmarks/results]
        [--name soak_cpu] [--model DIR_OR_NAME] [--server-arg=--workers-per-device=2 ...]

Plateau: the mean of the last third of the load phase against the mean of its middle third (the first third is the
warm-up), for the summed PSS (the honest total: shared pages counted once), the summed RSS and each process's RSS;
"plateau" when every one of them grew by less than --plateau-pct (default 3%).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import multiprocessing as mp
import os
import queue
import random
import statistics
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the sibling scripts: backends.py (machine description)

from backends import machine  # noqa: E402

from ganserve.serve.process import ServerProcess  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MB = 1 << 20


# -- the load: one process, asyncio (uvloop where installed), N closed-loop clients -----------------------------------
async def http_get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str,
                   host: str) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 GET on a kept-alive connection: (status, lower-cased headers, body). A minimal client, so that 256
    of them fit in one process on a small machine: with httpx's AsyncClient in their place, 256 clients got 64
    answers/s on 2 cores, most of them 200 after 2-5 s, while the server's queue of 64 was rarely full."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if "content-length" not in headers:
        raise ConnectionError(f"no Content-Length in a {status} answer")
    body = await reader.readexactly(int(headers["content-length"]))
    return status, headers, body


def load_process(url: str, clients: int, duration: float, max_requests: int, timeout: float, backoff: float,
                 abort_fraction: float, abort_after: float, report: mp.Queue) -> None:
    """Runs in a child process (so that its event loop does not delay the memory sampler). Each client keeps one
    connection and sends its next request as soon as the last one is answered (after a 503, after uniform(0, backoff)
    s). A request chosen to abort is cut off after `abort_after` s by closing its connection: the server sees a client
    disconnect. Puts a dict of what happened in each second on `report`, then ("done", totals)."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    host, port = url.removeprefix("http://").rsplit(":", 1)

    async def run() -> Counter:
        totals: Counter = Counter()
        tick: Counter = Counter()
        latencies: list[float] = []
        deadline = time.monotonic() + duration
        sent = 0

        async def one_client(i: int) -> None:
            nonlocal sent
            rng = random.Random(i)
            conn = None
            while time.monotonic() < deadline and sent < max_requests:
                sent += 1
                seed = rng.randrange(2**32)
                abort = abort_fraction > 0 and rng.random() < abort_fraction
                started = time.monotonic()
                try:
                    if conn is None:
                        conn = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
                    status, headers, body = await asyncio.wait_for(
                        http_get(*conn, f"/generate?seed={seed}", host), abort_after if abort else timeout)
                except TimeoutError:
                    tick["aborted" if abort else "fail:timeout"] += 1
                    conn = _close(conn)
                    continue
                except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError, IndexError) as e:
                    tick[f"fail:{type(e).__name__}"] += 1
                    conn = _close(conn)
                    await asyncio.sleep(0.1)
                    continue
                if status == 200 and body.startswith(PNG_SIGNATURE) and headers.get("x-seed") == str(seed):
                    tick["ok"] += 1
                    latencies.append(time.monotonic() - started)
                elif status == 503 and headers.get("retry-after", "").isdigit():
                    tick["busy"] += 1
                    if backoff > 0:
                        await asyncio.sleep(rng.uniform(0, backoff))
                else:
                    tick[f"fail:{status}"] += 1
                if headers.get("connection", "").lower() == "close":
                    conn = _close(conn)
            _close(conn)

        async def reporter() -> None:
            nonlocal tick, latencies
            while True:
                await asyncio.sleep(1.0)
                done, tick = tick, Counter()
                lat, latencies = latencies, []
                totals.update(done)
                if lat:
                    lat.sort()
                    done["p50_ms"] = round(1000 * lat[len(lat) // 2], 1)
                    done["p99_ms"] = round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 1)
                report.put(("tick", dict(done)))

        rep = asyncio.ensure_future(reporter())
        await asyncio.gather(*(one_client(i) for i in range(clients)))
        rep.cancel()
        totals.update(tick)
        return totals

    totals = asyncio.run(run())
    cpu = os.times()
    totals["cpu_seconds"] = round(cpu.user + cpu.system, 2)
    report.put(("done", dict(totals)))


def _close(conn) -> None:
    if conn is not None:
        conn[1].close()
    return None


# -- the server's process tree and its memory -----------------------------------------------------------------------
def roles(server: ServerProcess) -> dict[int, str]:
    """pid -> role: main, manager (LitServe's multiprocessing manager), api (the uvicorn process), worker0..N
    (inference), tracker (multiprocessing's resource tracker). The forked API process starts after the workers, the
    manager before them."""
    import psutil

    procs = []
    for pid in server.descendants():
        try:
            p = psutil.Process(pid)
            procs.append((p.create_time(), pid, " ".join(p.cmdline())))
        except psutil.Error:
            pass
    procs.sort()
    out: dict[int, str] = {}
    workers = [pid for _, pid, cmd in procs if "multiprocessing.spawn" in cmd]
    first_worker = min((t for t, pid, _ in procs if pid in workers), default=float("inf"))
    for t, pid, cmd in procs:
        if pid == server.proc.pid:
            out[pid] = "main"
        elif pid in workers:
            out[pid] = f"worker{workers.index(pid)}"
        elif "resource_tracker" in cmd:
            out[pid] = "tracker"
        else:
            out[pid] = "manager" if t < first_worker else "api"
    return out


def sample(pids: dict[int, str]) -> dict[str, dict[str, float]]:
    """role -> {rss, uss, pss} in MB (uss/pss where psutil can read them)."""
    import psutil

    out = {}
    for pid, role in pids.items():
        try:
            p = psutil.Process(pid)
            try:
                m = p.memory_full_info()
                out[role] = {"rss": m.rss / MB, "uss": m.uss / MB, "pss": getattr(m, "pss", float("nan")) / MB}
            except psutil.AccessDenied:
                out[role] = {"rss": p.memory_info().rss / MB, "uss": float("nan"), "pss": float("nan")}
        except psutil.Error:
            pass
    return out


def cpu_seconds(pids: dict[int, str]) -> dict[str, float]:
    """role -> CPU seconds (user + system) the process has used so far."""
    import psutil

    out = {}
    for pid, role in pids.items():
        try:
            t = psutil.Process(pid).cpu_times()
            out[role] = t.user + t.system
        except psutil.Error:
            pass
    return out


def get_json(url: str, timeout: float = 10.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def batch_sizes(server: ServerProcess) -> dict:
    """The server's own count of device batches by size (its ganserve_batch_size histogram, all models)."""
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    buckets: Counter = Counter()
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("ganserve_batch_size_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[le] += float(line.rsplit(" ", 1)[1])
        elif line.startswith("ganserve_batch_size_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("ganserve_batch_size_count"):
            count += float(line.rsplit(" ", 1)[1])
    cumulative = sorted(((float(k), v) for k, v in buckets.items()), key=lambda x: x[0])
    per_bucket, below = {}, 0.0
    for le, v in cumulative:
        if v - below:
            per_bucket[f"<={le:g}"] = int(v - below)
        below = v
    return {"batches": int(count), "mean": round(total / count, 2) if count else None, "by_size": per_bucket}


def recovery(server: ServerProcess, requests: int = 20) -> dict:
    """After the load: the queue drains, /health says ready, and `requests` sequential images come back as 200."""
    started = time.monotonic()
    depth = None
    while time.monotonic() - started < 60:
        try:
            health = get_json(server.url + "/health")
            depth = health.get("queue_depth")
            if health.get("status") == "ready" and depth == 0:
                break
        except OSError:
            pass
        time.sleep(0.2)
    drained_s = time.monotonic() - started
    ok, lat = 0, []
    for seed in range(requests):
        t = time.monotonic()
        try:
            with urllib.request.urlopen(f"{server.url}/generate?seed={seed}", timeout=30) as r:
                ok += r.status == 200 and r.read().startswith(PNG_SIGNATURE)
        except OSError:
            pass
        lat.append(time.monotonic() - t)
    return {"queue_drained_s": round(drained_s, 2), "queue_depth": depth, "requests": requests, "ok": ok,
            "p50_ms": round(1000 * statistics.median(lat), 1), "max_ms": round(1000 * max(lat), 1),
            "recovered": ok == requests and depth == 0}


# -- verdict and outputs ----------------------------------------------------------------------------------------
def thirds(values: list[float]) -> tuple[float, float, float]:
    n = len(values)
    a, b = values[: n // 3], values[n // 3: 2 * n // 3]
    c = values[2 * n // 3:]
    return tuple(statistics.fmean(x) if x else float("nan") for x in (a, b, c))  # type: ignore[return-value]


def plateau(rows: list[dict], series: list[str], limit_pct: float) -> dict:
    load = [r for r in rows if r["phase"] == "load"]
    out = {}
    for s in series:
        values = [r[s] for r in load if r.get(s) is not None]
        if len(values) < 6:
            continue
        first, middle, last = thirds(values)
        out[s] = {"first_third": round(first, 1), "middle_third": round(middle, 1), "last_third": round(last, 1),
                  "growth_pct": round(100 * (last - middle) / middle, 2)}
    verdict = all(v["growth_pct"] < limit_pct for v in out.values())
    return {"plateau": verdict, "limit_pct": limit_pct, "series": out}


def plot(rows: list[dict], role_names: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(10, 9), sharex=True,
                                        gridspec_kw={"height_ratios": [2, 2, 1.2]})
    t = [r["t"] for r in rows]
    ax1.plot(t, [r["total_rss"] for r in rows], "k-", label="sum of RSS")
    ax1.plot(t, [r["total_pss"] for r in rows], "k--", label="sum of PSS")
    ax1.plot(t, [r["total_uss"] for r in rows], "k:", label="sum of USS")
    colours = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"])
    for role in [r for r in role_names if r.startswith("worker")] + ["api", "main", "manager"]:
        if role not in role_names:
            continue
        c = next(colours)
        ax2.plot(t, [r.get(f"{role}_rss") for r in rows], color=c, label=f"{role} RSS")
        if role.startswith("worker") or role == "api":
            ax2.plot(t, [r.get(f"{role}_uss") for r in rows], color=c, ls=":", label=f"{role} USS")
    ax3.plot(t, [r["ok_per_s"] for r in rows], color="tab:green", label="200 per s (images/s, left)")
    ax3.plot(t, [r["fail_per_s"] for r in rows], color="tab:red", label="failures per s (left)")
    ax3b = ax3.twinx()
    ax3b.plot(t, [r["busy_per_s"] for r in rows], color="tab:orange", lw=0.7, label="503 + Retry-After per s (right)")
    ax3b.set_ylabel("503 / s")
    load_end = max((r["t"] for r in rows if r["phase"] == "load"), default=None)
    for ax in (ax1, ax2, ax3):
        if load_end is not None:
            ax.axvline(load_end, color="0.5", ls="--", lw=1)
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
    ax3b.set_ylim(bottom=0)
    ax1.legend(fontsize=7, loc="lower right")
    ax2.legend(fontsize=7, ncol=4, loc="lower right")
    h1, l1 = ax3.get_legend_handles_labels()
    h2, l2 = ax3b.get_legend_handles_labels()
    ax3.legend(h1 + h2, l1 + l2, fontsize=7, ncol=3, loc="upper left")
    ax1.set_ylabel("whole tree (MB)")
    ax2.set_ylabel("per process (MB)")
    ax3.set_ylabel("200 / s")
    ax3.set_xlabel("seconds since the load started (dashed: load ends; then recovery check and cool-down)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def replot(out: Path, name: str) -> None:
    """Redraw NAME.png from NAME.csv and NAME.json (after a change to the plot)."""
    with open(out / f"{name}.csv") as f:
        rows = [{k: (v if k == "phase" else float(v) if v not in ("", "None") else None) for k, v in r.items()}
                for r in csv.DictReader(f)]
    summary = json.loads((out / f"{name}.json").read_text())
    roles_ = sorted({k.rsplit("_", 1)[0] for k in rows[0] if k.endswith("_rss") and not k.startswith("total")})
    plot(rows, roles_, out / f"{name}.png", summary["title"])


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("litserve", "fastapi", "uvicorn", "uvloop", "httpx", "psutil", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=240.0, help="seconds of load (default 240)")
    p.add_argument("--clients", type=int, default=256, help="concurrent closed-loop clients (default 256)")
    p.add_argument("--max-queue", type=int, default=64, help="the server's --max-queue (default 64)")
    p.add_argument("--model", help="model directory or bundled name (default: the bundled models, as `ganserve serve`)")
    p.add_argument("--server-arg", action="append", default=[],
                   help="extra `ganserve serve` flag, repeatable, e.g. --server-arg=--workers-per-device=1")
    p.add_argument("--max-requests", type=int, default=2_000_000, help="cap on requests sent (default 2,000,000)")
    p.add_argument("--request-timeout", type=float, default=30.0, help="client timeout per request, s (default 30)")
    p.add_argument("--backoff", type=float, default=0.0,
                   help="after a 503 a client waits uniform(0, BACKOFF) s (default 0: retries at once)")
    p.add_argument("--abort-fraction", type=float, default=0.0,
                   help="share of requests the client hangs up on after --abort-after s (client disconnects)")
    p.add_argument("--abort-after", type=float, default=0.05)
    p.add_argument("--cooldown", type=float, default=20.0, help="seconds of sampling after the load (default 20)")
    p.add_argument("--plateau-pct", type=float, default=3.0)
    p.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server's environment, repeatable")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--name", default="soak_cpu", help="file name stem (default soak_cpu)")
    p.add_argument("--replot", action="store_true", help="only redraw NAME.png from NAME.csv and NAME.json")
    args = p.parse_args(argv)
    if args.replot:
        replot(Path(args.out), args.name)
        return 0

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(kv.split("=", 1) for kv in args.env)
    flags = ["--max-queue", str(args.max_queue), "--log-level", "warning", *args.server_arg]
    log = out / f"{args.name}.log"
    server = ServerProcess([args.model] if args.model else [], *flags, log=log, env=env)
    print(f"soak: starting ganserve serve {' '.join(flags)} (log {log})", flush=True)
    t0 = time.monotonic()
    server.start(300)
    rows: list[dict] = []
    try:
        print(f"soak: ready in {time.monotonic() - t0:.1f} s at {server.url}", flush=True)
        models = get_json(server.url + "/models")
        for seed in range(4):  # lazy initialisation before the first sample
            with urllib.request.urlopen(f"{server.url}/generate?seed={seed}", timeout=60) as r:
                r.read()
        pids = roles(server)
        role_names = sorted(set(pids.values()))
        print("soak: processes " + ", ".join(f"{r}={pid}" for pid, r in sorted(pids.items(), key=lambda x: x[1])),
              flush=True)
        report: mp.Queue = mp.get_context("spawn").Queue()
        loader = mp.get_context("spawn").Process(
            target=load_process, name="soak-load",
            args=(server.url, args.clients, args.duration, args.max_requests, args.request_timeout, args.backoff,
                  args.abort_fraction, args.abort_after, report))
        start = time.monotonic()
        before = sample(pids)
        cpu_before = cpu_seconds(pids)
        cpu_after, load_wall = cpu_before, float("nan")
        loader.start()
        totals: Counter | None = None
        tick: dict = {}
        recovered: dict = {}
        batches: dict = {}
        phase = "load"
        next_sample = start
        end_by = start + args.duration + 90  # the load ends on its own; a stuck one is cut off
        while True:
            now = time.monotonic()
            if now < next_sample:
                time.sleep(next_sample - now)
            next_sample += 1.0
            while True:
                try:
                    kind, data = report.get_nowait()
                except queue.Empty:
                    break
                if kind == "tick":
                    tick = data
                else:
                    totals = Counter(data)
            if phase == "load" and (totals is not None or time.monotonic() > end_by):
                phase = "recovery"
                cpu_after, load_wall = cpu_seconds(pids), time.monotonic() - start
                loader.join(10)
                if loader.is_alive():
                    loader.kill()
                print("soak: load over; checking recovery", flush=True)
                recovered = recovery(server)
                batches = batch_sizes(server)
                print(f"soak: device batches {batches}", flush=True)
                print(f"soak: recovery {recovered}", flush=True)
                cool_from = time.monotonic()
                next_sample = cool_from
                phase = "cooldown"
                continue
            if phase == "cooldown" and time.monotonic() - cool_from > args.cooldown:
                break
            pids_now = roles(server)
            if set(pids_now) != set(pids):
                print(f"soak: the process tree changed: {pids} -> {pids_now}", flush=True)
                pids = pids_now
                role_names = sorted(set(role_names) | set(pids.values()))
            mem = sample(pids)
            row = {"t": round(time.monotonic() - start, 1), "phase": phase,
                   "ok_per_s": tick.get("ok", 0) if phase == "load" else 0,
                   "busy_per_s": tick.get("busy", 0) if phase == "load" else 0,
                   "fail_per_s": sum(v for k, v in tick.items() if k.startswith("fail")) if phase == "load" else 0,
                   "aborted_per_s": tick.get("aborted", 0) if phase == "load" else 0,
                   "p50_ms": tick.get("p50_ms") if phase == "load" else None}
            for kind in ("rss", "uss", "pss"):
                row[f"total_{kind}"] = round(sum(m[kind] for m in mem.values()), 1)
            for role in role_names:
                for kind in ("rss", "uss", "pss"):
                    row[f"{role}_{kind}"] = round(mem[role][kind], 1) if role in mem else None
            rows.append(row)
            tick = {}
            if phase == "load" and len(rows) % 10 == 1:
                per = " ".join(f"{r}={mem[r]['rss']:.0f}" for r in role_names if r in mem and r != "tracker")
                print(f"soak: t={row['t']:5.0f}s  200/s={row['ok_per_s']:4d}  503/s={row['busy_per_s']:5d}  "
                      f"fail/s={row['fail_per_s']}  p50={row['p50_ms']} ms  RSS MB: total={row['total_rss']:.0f} "
                      f"PSS total={row['total_pss']:.0f}  {per}", flush=True)
        print("soak: stopping the server", flush=True)
    finally:
        try:
            status = server.stop()
        finally:
            server.kill()
    totals = totals or Counter()
    failures = {k: v for k, v in totals.items() if k.startswith("fail")}
    load_rows = [r for r in rows if r["phase"] == "load"]
    load_seconds = max(r["t"] for r in load_rows) if load_rows else float("nan")
    series = ["total_pss", "total_rss"] + [f"{r}_rss" for r in role_names if r not in ("tracker",)]
    verdict = plateau(rows, series, args.plateau_pct)

    def at(role: str, kind: str = "rss") -> dict:
        col = f"{role}_{kind}" if role != "total" else f"total_{kind}"
        vals = [r[col] for r in load_rows if r.get(col) is not None]
        cool = [r[col] for r in rows if r["phase"] == "cooldown" and r.get(col) is not None]
        first = before.get(role, {}).get(kind) if role != "total" else sum(m[kind] for m in before.values())
        return {"before_load": round(first, 1) if first is not None else None,
                "after_warmup": round(statistics.fmean(vals[len(vals) // 3: len(vals) // 3 + 10]), 1) if vals else None,
                "end_of_load": round(statistics.fmean(vals[-10:]), 1) if vals else None,
                "max": round(max(vals), 1) if vals else None,
                "after_cooldown": round(cool[-1], 1) if cool else None}

    summary = {
        "name": args.name,
        "command": "python benchmarks/soak.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "finished_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "server": {"flags": flags, "models": [m["name"] for m in models["models"]],
                   "backend": models["models"][0]["backend"], "exit_status": status},
        "load": {"clients": args.clients, "seconds": load_seconds, "backoff_s": args.backoff,
                 "abort_fraction": args.abort_fraction},
        "responses": {"200": totals.get("ok", 0), "503_with_retry_after": totals.get("busy", 0),
                      "aborted_by_client": totals.get("aborted", 0), "failures": failures},
        "images_per_s": round(totals.get("ok", 0) / load_seconds, 1) if load_rows else None,
        "cpu_cores_during_load": {
            **{r: round((cpu_after[r] - cpu_before.get(r, 0.0)) / load_wall, 2) for r in sorted(cpu_after)},
            "client": round(totals.get("cpu_seconds", float("nan")) / load_wall, 2)},
        "recovery": recovered,
        "device_batches": batches,
        "memory_mb": {role: at(role) for role in ["total", *role_names] if role != "tracker"},
        "memory_mb_pss_total": at("total", "pss"),
        "memory_mb_uss_total": at("total", "uss"),
        "plateau": verdict,
        "machine": {**machine(), **versions()},
    }
    csv_path, png_path, json_path = (out / f"{args.name}.{ext}" for ext in ("csv", "png", "json"))
    with open(csv_path, "w", newline="") as f:
        fields = list(rows[0]) if rows else []
        for r in rows:
            fields += [k for k in r if k not in fields]
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    summary["title"] = (f"ganserve serve --max-queue {args.max_queue}, {args.clients} clients, {load_seconds:.0f} s: "
                        f"{summary['images_per_s']} img/s, {totals.get('busy', 0)} x 503, "
                        f"{sum(failures.values())} failures; plateau: {verdict['plateau']}")
    json_path.write_text(json.dumps(summary, indent=1) + "\n")
    plot(rows, role_names, png_path, summary["title"])
    if status == 0 and not failures:
        log.unlink(missing_ok=True)
    print(f"soak: wrote {csv_path}, {png_path}, {json_path}", flush=True)
    print(f"soak: responses {summary['responses']}, {summary['images_per_s']} img/s; recovered: "
          f"{recovered.get('recovered')}", flush=True)
    print(f"soak: CPU cores used during the load: {summary['cpu_cores_during_load']}", flush=True)
    for s, v in verdict["series"].items():
        print(f"soak:   {s:14s} first/middle/last third {v['first_third']:8.1f} {v['middle_third']:8.1f} "
              f"{v['last_third']:8.1f} MB  growth {v['growth_pct']:+.2f}%", flush=True)
    print(f"soak: plateau (last third vs middle third < {args.plateau_pct}% for each): {verdict['plateau']}",
          flush=True)
    return 0 if recovered.get("recovered") and not failures else 1


if __name__ == "__main__":
    sys.exit(main())
