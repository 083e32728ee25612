"""``prefect_call``: the nightly's end-of-run hook retries a busy Prefect server, not a
refusal. The CI run that found it: the server's SQLite database was locked under load."""

from __future__ import annotations

import httpx
import pytest

from contracts.errors import TransientError
from controlplane.schedules import prefect_call


def _answer(status: int) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "http://prefect/api/deployments/x/create_flow_run")
    return httpx.HTTPStatusError(f"{status}", request=request,
                                 response=httpx.Response(status, request=request))


class _Server:
    """Raises each of ``failures`` in turn, then answers ``"run"``."""

    def __init__(self, *failures: Exception) -> None:
        self.failures = list(failures)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "run"


def test_a_busy_server_is_asked_again_with_growing_waits():
    waits: list[float] = []
    server = _Server(_answer(500), _answer(503), httpx.ConnectError("refused"))
    assert prefect_call(server, sleep=waits.append) == "run"
    assert server.calls == 4
    assert len(waits) == 3 and waits[0] < waits[2]


def test_a_server_busy_every_time_ends_in_a_transient_error_naming_the_answer():
    server = _Server(*[_answer(500)] * 4)
    with pytest.raises(TransientError, match="answered 500"):
        prefect_call(server, sleep=lambda _s: None)
    assert server.calls == 4


@pytest.mark.parametrize("status", [400, 404, 409, 422])
def test_a_refusal_is_raised_at_once(status):
    server = _Server(_answer(status))
    with pytest.raises(httpx.HTTPStatusError):
        prefect_call(server, sleep=lambda _s: pytest.fail("a refusal was retried"))
    assert server.calls == 1


def test_a_prefect_status_error_counts_as_an_answer():
    from prefect.exceptions import PrefectHTTPStatusError

    busy = _answer(500)
    server = _Server(PrefectHTTPStatusError.from_httpx_error(busy))
    assert prefect_call(server, sleep=lambda _s: None) == "run"
    assert server.calls == 2
