"""Locust load for a ganserve server: users ask GET /generate for random seeds and check that each answer is a PNG.

Owns the simulated user; `--variants` adds psi/style-mixing GETs and batched POSTs. Usable by plain `locust`:

    locust -f benchmarks/locustfile.py --host http://127.0.0.1:8000                      # web UI on :8089
    locust -f benchmarks/locustfile.py --host http://127.0.0.1:8000 --headless -u 8 -r 8 -t 30s --csv out/run
Extra options: --variants (also psi, mixing and POSTs of --post-seeds seeds), --warmup-s S (statistics restart after
S seconds), --max-requests N (each run stops sending after N requests), --cpu-report FILE (this process's CPU time
during the measured window, as JSON: the load generator shares the machine with the server).
"""

from __future__ import annotations

import json
import random
import time

import gevent
from locust import FastHttpUser, constant, events, task
from locust.exception import StopUser

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_SEED = 2**32 - 1
MIX_LAYERS = ("coarse", "middle", "fine")

_state = {"sent": 0, "window_started": None, "cpu_started": None}


@events.init_command_line_parser.add_listener
def _add_options(parser) -> None:
    parser.add_argument("--variants", action="store_true", default=False,
                        help="also send psi/style-mixing GETs and batched POSTs (StyleGAN servers)")
    parser.add_argument("--post-seeds", type=int, default=8, help="seeds per POST with --variants (default 8)")
    parser.add_argument("--warmup-s", type=float, default=0.0, help="restart the statistics after this many seconds")
    parser.add_argument("--max-requests", type=int, default=0, help="stop sending after this many requests (0: no cap)")
    parser.add_argument("--cpu-report", default="", help="write this process's CPU seconds in the window to FILE")


@events.test_start.add_listener
def _on_start(environment, **kwargs) -> None:
    options = environment.parsed_options
    _start_window()
    if options is not None and options.warmup_s > 0 and environment.runner is not None:

        def restart():
            environment.runner.stats.reset_all()
            _start_window()

        gevent.spawn_later(options.warmup_s, restart)


@events.test_stop.add_listener
def _on_stop(environment, **kwargs) -> None:
    options = environment.parsed_options
    if options is None or not options.cpu_report or _state["window_started"] is None:
        return
    wall = time.monotonic() - _state["window_started"]
    cpu = time.process_time() - _state["cpu_started"]
    with open(options.cpu_report, "w") as f:
        json.dump({"cpu_seconds": round(cpu, 3), "wall_seconds": round(wall, 3),
                   "cores": round(cpu / wall, 3) if wall > 0 else 0.0}, f)


def _start_window() -> None:
    _state["window_started"], _state["cpu_started"] = time.monotonic(), time.process_time()


def _is_png(data: bytes | None) -> bool:
    return bool(data) and data.startswith(PNG_SIGNATURE)  # a signature check: decoding would cost our CPU


class ImageUser(FastHttpUser):
    """One request in flight per user, no think time: N users hold the server at concurrency N."""

    wait_time = constant(0)

    def _count(self) -> None:
        options = self.environment.parsed_options
        cap = options.max_requests if options is not None else 0
        if cap and _state["sent"] >= cap:
            raise StopUser()
        _state["sent"] += 1

    def _get(self, query: str, name: str, seed: int) -> None:
        with self.client.get(f"/generate?{query}", name=name, catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}: {(r.text or '')[:200]}")
            elif not _is_png(r.content):
                r.failure("the body is not a PNG")
            elif r.headers.get("X-Seed") != str(seed):
                r.failure(f"X-Seed is {r.headers.get('X-Seed')!r}, asked for {seed}")

    @task(6)
    def generate(self) -> None:
        self._count()
        seed = random.randint(0, MAX_SEED)
        self._get(f"seed={seed}", "GET /generate", seed)

    @task(1)
    def generate_variant(self) -> None:
        if not self._variants():
            return self.generate()
        self._count()
        seed = random.randint(0, MAX_SEED)
        if random.random() < 0.5:
            self._get(f"seed={seed}&psi=0.7", "GET /generate psi", seed)
        else:
            mix = random.randint(0, MAX_SEED)
            self._get(f"seed={seed}&mix_seed={mix}&mix_layers={random.choice(MIX_LAYERS)}", "GET /generate mix", seed)

    @task(1)
    def generate_batch(self) -> None:
        if not self._variants():
            return self.generate()
        self._count()
        n = self.environment.parsed_options.post_seeds
        start = random.randint(0, MAX_SEED - n)
        body = {"seeds": f"{start}-{start + n - 1}", "psi": 0.7}
        with self.client.post("/generate", json=body, name=f"POST /generate x{n}", catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}: {(r.text or '')[:200]}")
            elif (r.content or b"").count(PNG_SIGNATURE) != n:
                r.failure(f"expected {n} PNG parts, got {(r.content or b'').count(PNG_SIGNATURE)}")

    def _variants(self) -> bool:
        options = self.environment.parsed_options
        return bool(options is not None and options.variants)
