"""Property-based fuzz of the HTTP API from its own OpenAPI schema (schemathesis): no input may cause a 5xx.

Bounded: a fixed number of generated requests per operation against one tiny-model server on loopback. Driven
through hypothesis directly (not schemathesis' pytest plugin, which breaks with some pytest releases).
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402

from ganserve.serve.process import ServerProcess  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def api_schema(model_dirs, tmp_path_factory):
    models = [f"sg={model_dirs['stylegan']}", f"pg={model_dirs['progan']}"]
    flags = ["--backend", "torch", "--max-batch-size", "16", "--max-seeds", "64", "--max-queue", "256",
             "--log-level", "warning"]
    with ServerProcess(models, *flags, log=tmp_path_factory.mktemp("fuzz") / "server.log") as server:
        yield schemathesis.openapi.from_url(f"{server.url}/openapi.json")


def test_no_request_from_the_schema_gets_a_server_error(api_schema):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.label for op in operations} >= {"GET /generate", "POST /generate", "GET /models", "GET /health"}
    for operation in operations:

        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy())
        def no_server_error(case):
            response = case.call(timeout=30)
            assert response.status_code < 500, (
                f"{case.method} {case.formatted_path}: {response.status_code} {response.text}"
            )
            if response.status_code >= 400:
                assert isinstance(response.json()["detail"], str), response.text

        no_server_error()
