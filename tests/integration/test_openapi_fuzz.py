"""schemathesis against the running server's own OpenAPI schema (``/schema/openapi.json``): no operation answers 5xx.

Every operation gets valid and invalid requests made from its schema, with a user's bearer token.
``DELETE /v1/users/me/data`` runs as a new throwaway user each time. Two operations are left out,
each for a reason: ``GET /v1/live`` streams for as long as the client listens (its auth and
isolation are tested in tests/integration/test_live.py and test_isolation.py), and ``POST /v1/chat``
needs a Letta server, which this one has not; without it the answer is a deliberate 503 that says
so (tests/integration/test_chat.py covers chat with Letta).
"""

from __future__ import annotations

import contextlib
import itertools
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.schemas import BaseSchema

from app.http.server import create_app
from app.settings import Settings
from tests.support import ServerProcess, token

set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "omi-letta-hypothesis")  # its caches stay out of the repo
_throwaway = itertools.count()


@pytest.fixture(scope="module")
def openapi_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("openapi"), env={"WS_CONNECT_INTERVAL_S": "0"}).start()
    yield proc
    proc.stop()
    log = proc.log()
    assert not [line for line in log.splitlines() if re.search(r"\bERROR\b|Traceback", line)], log[-3000:]


@pytest.fixture(scope="module")
def api_schema(openapi_server: ServerProcess) -> BaseSchema:
    """The schema as the running server serves it."""
    return schemathesis.openapi.from_url(f"{openapi_server.http}/schema/openapi.json", timeout=30)


def _operations() -> list[str]:
    """``METHOD path`` of every operation in the app's schema, the two left out excepted."""
    paths = create_app(Settings()).openapi_schema.to_schema()["paths"]
    found = {f"{m.upper()} {path}" for path, item in paths.items() for m in item if m in METHODS}
    assert found >= LEFT_OUT, "an operation left out is no longer in the schema"
    return sorted(found - LEFT_OUT)


METHODS = ("get", "put", "post", "patch", "delete")
LEFT_OUT = {"GET /v1/live", "POST /v1/chat"}  # why: see the module's docstring
OPERATIONS = _operations()


def test_the_served_schema_has_the_apps_operations(api_schema: BaseSchema) -> None:
    served = {f"{op.ok().method.upper()} {op.ok().path}" for op in api_schema.get_all_operations()}
    assert served - LEFT_OUT == set(OPERATIONS)


@pytest.mark.parametrize("operation", OPERATIONS)
def test_no_operation_answers_a_server_error(
    api_schema: BaseSchema, openapi_server: ServerProcess, operation: str
) -> None:
    """Valid requests, then invalid ones where the schema allows any (not every operation has a parameter to break)."""
    method, path = operation.split(" ", 1)
    erases = operation == "DELETE /v1/users/me/data"

    def run(mode: GenerationMode) -> None:
        @given(case=api_schema[path][method].as_strategy(generation_mode=mode))
        @settings(max_examples=12, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def check(case: Case) -> None:
            uid = f"openapi-gone-{next(_throwaway)}" if erases else "openapi"  # erasing: a throwaway user
            headers = {**(case.headers or {}), "Authorization": f"Bearer {token(uid)}"}
            case.call_and_validate(
                base_url=openapi_server.http, headers=headers, checks=[not_a_server_error], timeout=60
            )

        check()

    run(GenerationMode.POSITIVE)
    with contextlib.suppress(Unsatisfiable):  # the schema admits every request: there is no invalid one
        run(GenerationMode.NEGATIVE)
