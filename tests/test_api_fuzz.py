"""Property-based fuzz of the HTTP API from its own OpenAPI schema (schemathesis): no input may cause a 5xx.

Bounded: a fixed number of generated requests per operation against one tiny-model server on loopback. Driven
through hypothesis directly (not schemathesis' pytest plugin, which breaks with some pytest releases).

Reproducible: hypothesis draws from a fixed seed (its own `@seed` mechanism, no example database), printed by the
test and named in any failure; set GANSERVE_FUZZ_SEED=N to fuzz with another one.
"""

from __future__ import annotations

import os

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import seed as hypothesis_seed  # noqa: E402

from ganserve.serve.process import ServerProcess  # noqa: E402

pytestmark = pytest.mark.slow
DEFAULT_FUZZ_SEED = 20240607
FUZZ_SEED = int(os.environ.get("GANSERVE_FUZZ_SEED", DEFAULT_FUZZ_SEED))
FUZZ_SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)


@pytest.fixture(scope="module")
def api_schema(model_dirs, tmp_path_factory):
    models = [f"sg={model_dirs['stylegan']}", f"pg={model_dirs['progan']}"]
    flags = ["--backend", "torch", "--max-batch-size", "16", "--max-seeds", "64", "--max-queue", "256",
             "--log-level", "warning"]
    with ServerProcess(models, *flags, log=tmp_path_factory.mktemp("fuzz") / "server.log") as server:
        yield schemathesis.openapi.from_url(f"{server.url}/openapi.json")


def test_no_request_from_the_schema_gets_a_server_error(api_schema):
    print(f"fuzz seed {FUZZ_SEED} (GANSERVE_FUZZ_SEED={FUZZ_SEED} repeats this run)")
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.label for op in operations} >= {"GET /generate", "POST /generate", "GET /models", "GET /health"}
    for operation in operations:

        @hypothesis_seed(FUZZ_SEED)
        @FUZZ_SETTINGS
        @given(case=operation.as_strategy())
        def no_server_error(case):
            response = case.call(timeout=30)
            assert response.status_code < 500, (
                f"{case.method} {case.formatted_path}: {response.status_code} {response.text} "
                f"(GANSERVE_FUZZ_SEED={FUZZ_SEED})"
            )
            if response.status_code >= 400:
                assert isinstance(response.json()["detail"], str), f"{response.text} (GANSERVE_FUZZ_SEED={FUZZ_SEED})"

        no_server_error()


def _drawn_cases(operation, fuzz_seed: int) -> list[tuple]:
    """What hypothesis draws for `operation` from `fuzz_seed`, without sending anything."""
    drawn = []

    @hypothesis_seed(fuzz_seed)
    @FUZZ_SETTINGS
    @given(case=operation.as_strategy())
    def draw(case):
        drawn.append((case.method, case.formatted_path, repr(case.query), repr(case.body), repr(case.headers)))

    draw()
    return drawn


def test_the_fuzz_seed_makes_the_generated_requests_reproducible(api_schema):
    operation = next(op.ok() for op in api_schema.get_all_operations() if op.ok().label == "POST /generate")
    first = _drawn_cases(operation, FUZZ_SEED)
    assert len(first) > 1 and first == _drawn_cases(operation, FUZZ_SEED), f"fuzz seed {FUZZ_SEED}"
    assert first != _drawn_cases(operation, FUZZ_SEED + 1), "another seed should draw other requests"
