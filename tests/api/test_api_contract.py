"""The published contract: every operation of /openapi.json, fed requests that schemathesis
generates from the schema itself (valid and invalid), answers with a status the schema
declares for it, a body that matches the declared model, and never a 5xx.

On the embedded stack with no worker: a job a request queues stays queued, and the stack
(a temporary folder) goes when the test ends.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.main import create_app
from tests.service_stack import make_stack

# Enough to reach every status of every operation, few enough to run in well under a
# minute on two busy cores.
EXAMPLES_PER_OPERATION = 12
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def contract_schema(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract")
    stack = make_stack(
        root,
        database_url=f"sqlite:///{root}/var/gistnet.sqlite",
        broker_url=f"sqla+sqlite:///{root}/var/broker.sqlite",
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(stack.settings))
    schema.config.generation.update(
        modes=["positive", "negative"],
        max_examples=EXAMPLES_PER_OPERATION,
        deterministic=True,
        database="none",
    )
    yield schema
    # schemathesis started the app's lifespan (database, broker, batcher): stop it.
    from schemathesis.python.asgi import shutdown_lifespans

    shutdown_lifespans()


def _cases() -> list[tuple[str, str, str]]:
    """(method, path, mode) for every operation: valid requests, and invalid ones where the
    operation takes anything that can be invalid."""
    # Building the app only declares its routes: no database, file or server is touched.
    from service.settings import Settings

    spec = create_app(Settings()).openapi()
    cases = []
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            cases.append((method.upper(), path, "positive"))
            if operation.get("parameters") or operation.get("requestBody"):
                cases.append((method.upper(), path, "negative"))
    return cases


# (schemathesis's own pytest plugin would do this, but its lazy loader does not run on
# pytest 9.2: the strategies are used directly.)
@pytest.mark.parametrize(("method", "path", "mode"), _cases(), ids=lambda v: str(v))
def test_every_operation_answers_as_its_schema_says(contract_schema, method, path, mode):
    from schemathesis.generation.modes import GenerationMode

    operation = contract_schema[path][method]

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=GenerationMode(mode)))
    def answers_as_declared(case):
        case.call_and_validate(checks=CHECKS)

    answers_as_declared()


def test_every_error_a_route_answers_is_declared_with_the_one_error_shape():
    from service.settings import Settings

    spec = create_app(Settings()).openapi()
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for path, item in spec["paths"].items():
        # OpenAI's routes answer OpenAI's error shape, and 400 for an invalid request.
        openai = path.startswith("/v1/")
        error = {"$ref": f"#/components/schemas/{'OpenAIErrorPublic' if openai else 'ErrorPublic'}"}
        for method, operation in item.items():
            declared = operation["responses"]
            expected = set()
            if path != "/health":
                expected.add("401")  # the API key
            if path not in ("/health", "/info"):  # /info reads no database and no broker
                expected.add("503")  # a database away, or a broker
            if operation.get("parameters") or operation.get("requestBody"):
                expected.add("400" if openai else "422")
            if method == "post":
                expected.add("413")
            if "{" in path or (
                method == "post"
                and path
                in (
                    "/train",
                    "/evaluations",
                    "/gist",
                    "/v1/embeddings",
                    "/score",
                    "/generate",
                    "/memories",
                )
            ):
                expected.add("404")
            assert expected <= set(declared), (method, path, expected - set(declared))
            for status in expected - {"503"} if path == "/ready" else expected:
                body = declared[status]["content"]["application/json"]["schema"]
                assert body == error, (method, path, status)
