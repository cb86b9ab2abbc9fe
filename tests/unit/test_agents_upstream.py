"""Retries towards an agent's upstream: which answers are asked again, how often, how long apart."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest
from tenacity import wait_none

from shared_code.orchestrator.agents.upstream import MAX_RETRY_AFTER_SECONDS, post_with_retries

URL = "https://upstream.example/v1/chat/completions"


def answering(*outcomes: int | type[httpx.HTTPError]) -> tuple[httpx.AsyncClient, list[int]]:
    """A client whose upstream gives ``outcomes`` in turn (a status, or a transport error)."""
    calls: list[int] = []

    def respond(request: httpx.Request) -> httpx.Response:
        outcome = outcomes[min(len(calls), len(outcomes) - 1)]
        calls.append(len(calls) + 1)
        if isinstance(outcome, int):
            return httpx.Response(outcome, json={"n": len(calls)})
        raise outcome("upstream trouble", request=request)

    return httpx.AsyncClient(transport=httpx.MockTransport(respond)), calls


@pytest.mark.parametrize("status", [429, 502, 503, 504])
async def test_a_try_again_answer_is_retried_until_an_answer_comes(status: int) -> None:
    http, calls = answering(status, status, 200)
    response = await post_with_retries(http, URL, json={}, wait=wait_none())
    assert response.status_code == 200
    assert len(calls) == 3


async def test_after_the_last_attempt_the_last_answer_is_returned() -> None:
    http, calls = answering(503)
    response = await post_with_retries(http, URL, json={}, attempts=3, wait=wait_none())
    assert response.status_code == 503
    assert len(calls) == 3


@pytest.mark.parametrize("status", [400, 401, 404, 500])
async def test_other_errors_are_not_sent_again(status: int) -> None:
    # A 500 may come after the upstream acted (a model call billed, a platform that answered).
    http, calls = answering(status, 200)
    response = await post_with_retries(http, URL, json={}, wait=wait_none())
    assert response.status_code == status
    assert len(calls) == 1


@pytest.mark.parametrize("error", [httpx.ConnectError, httpx.ConnectTimeout])
async def test_a_request_that_never_left_is_retried(error: type[httpx.HTTPError]) -> None:
    http, calls = answering(error, error, 200)
    response = await post_with_retries(http, URL, json={}, wait=wait_none())
    assert response.status_code == 200
    assert len(calls) == 3


@pytest.mark.parametrize("error", [httpx.ReadTimeout, httpx.RemoteProtocolError])
async def test_a_request_that_may_have_arrived_is_not_sent_again(
    error: type[httpx.HTTPError],
) -> None:
    http, calls = answering(error, 200)
    with pytest.raises(error):
        await post_with_retries(http, URL, json={}, wait=wait_none())
    assert len(calls) == 1


async def test_unreachable_to_the_end_raises_the_transport_error() -> None:
    http, calls = answering(httpx.ConnectError)
    with pytest.raises(httpx.ConnectError):
        await post_with_retries(http, URL, json={}, wait=wait_none())
    assert len(calls) == 3


def retry_after(value: str, then: int = 200) -> Callable[[httpx.Request], httpx.Response]:
    answers = iter([httpx.Response(429, headers={"Retry-After": value}), httpx.Response(then)])
    return lambda request: next(answers)


async def test_retry_after_in_seconds_sets_the_wait() -> None:
    http = httpx.AsyncClient(transport=httpx.MockTransport(retry_after("0.3")))
    started = time.monotonic()
    response = await post_with_retries(http, URL, json={}, wait=wait_none())
    assert response.status_code == 200
    assert 0.3 <= time.monotonic() - started < 2.0


async def test_a_long_retry_after_is_capped() -> None:
    http = httpx.AsyncClient(transport=httpx.MockTransport(retry_after("3600")))
    slept: list[float] = []

    async def record(seconds: float) -> None:
        slept.append(seconds)

    response = await post_with_retries(http, URL, json={}, wait=wait_none(), sleep=record)
    assert response.status_code == 200
    assert slept == [MAX_RETRY_AFTER_SECONDS]


async def test_without_retry_after_the_wait_grows() -> None:
    http, _ = answering(503, 503, 503, 200)
    slept: list[float] = []

    async def record(seconds: float) -> None:
        slept.append(seconds)

    response = await post_with_retries(http, URL, json={}, attempts=4, sleep=record)
    assert response.status_code == 200
    assert len(slept) == 3
    # Jittered exponential: each wait within its doubling bound (0.25 s, 0.5 s, 1 s).
    assert all(0 <= waited <= 0.25 * 2**n for n, waited in enumerate(slept))
