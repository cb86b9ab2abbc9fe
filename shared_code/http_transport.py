"""An httpx transport that moves the bytes with aiohttp.

Callers keep httpx's API (and ``httpx.MockTransport`` in tests); only the connection handling
changes. Why: in bench/sender httpx's own transport (httpcore over anyio) took ~40 % of a sender
host's CPU — two socket writes per request (headers, then body), a readability poll of every idle
keep-alive connection on each request, anyio's per-call checkpoints — against a fraction of that
for aiohttp's. ``httpx-aiohttp`` (PyPI) does the same job, but maps a dropped connection
(``ServerDisconnectedError``, any ``ClientConnectionError``) to ``httpx.ConnectTimeout``: "nothing
was sent", which would let the sender resend a message Meta may already have delivered.

Proxy settings in the environment (``HTTPS_PROXY``) are not read, unlike httpx's default:
aiohttp's ``trust_env`` also looks up ``~/.netrc`` on every request, which cost the simulator a
third more CPU in bench/e2e. The Graph API is reached directly from Azure Functions.

The exception mapping here keeps httpx's meaning for :mod:`shared_code.whatsapp.errors`: the
request "cannot have left" only when no connection was made or our own pool timed out; every
failure after the request started writing maps to a read-side error (it may have been sent).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager

import aiohttp
import certifi
import httpx

__all__ = ["AiohttpTransport", "async_client"]

_CHUNK_SIZE = 64 * 1024


@contextmanager
def _httpx_errors(request: httpx.Request) -> Iterator[None]:
    try:
        yield
    except aiohttp.ConnectionTimeoutError as error:  # connect or pool wait (ClientTimeout.connect)
        raise httpx.ConnectTimeout(str(error) or "connect timeout", request=request) from error
    except aiohttp.SocketTimeoutError as error:  # the answer did not come within sock_read
        raise httpx.ReadTimeout(str(error) or "read timeout", request=request) from error
    except aiohttp.ClientProxyConnectionError as error:
        raise httpx.ProxyError(str(error), request=request) from error
    except aiohttp.ClientConnectorError as error:  # DNS, TCP or TLS: no connection was made
        raise httpx.ConnectError(str(error), request=request) from error
    except aiohttp.InvalidURL as error:
        raise httpx.UnsupportedProtocol(str(error), request=request) from error
    except aiohttp.ClientResponseError as error:  # a malformed answer
        raise httpx.RemoteProtocolError(str(error), request=request) from error
    except aiohttp.ServerDisconnectedError as error:
        raise httpx.RemoteProtocolError(str(error), request=request) from error
    except (aiohttp.ClientError, OSError, TimeoutError) as error:
        # A socket that broke while writing or reading: part or all of the request may be out.
        raise httpx.ReadError(str(error) or type(error).__name__, request=request) from error


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_errors(self._request):
            async for chunk in self._response.content.iter_chunked(_CHUNK_SIZE):
                yield chunk

    async def aclose(self) -> None:
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """One aiohttp session (created on first use, in the running loop) with httpx's limits."""

    def __init__(self, *, limits: httpx.Limits) -> None:
        self._limits = limits
        self._session: aiohttp.ClientSession | None = None

    def _open_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._limits.max_connections or 0,
                limit_per_host=0,
                keepalive_timeout=self._limits.keepalive_expiry or 15.0,
                ssl=ssl.create_default_context(cafile=certifi.where()),
            )
            # httpx already adds its default headers and decodes Content-Encoding itself.
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",)
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._open_session()
        timeouts = request.extensions.get("timeout", {})
        connect, pool, read = timeouts.get("connect"), timeouts.get("pool"), timeouts.get("read")
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=None if connect is None or pool is None else connect + pool,
            sock_connect=connect,
            sock_read=read,
        )
        body = await request.aread()
        # The raw pairs: ``multi_items()`` re-detects the headers' encoding for every item.
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in request.headers.raw
            if name.lower() not in (b"host", b"transfer-encoding")
        ]
        with _httpx_errors(request):
            response = await session.request(
                request.method,
                str(request.url),
                headers=headers,
                data=body or None,
                allow_redirects=False,
                timeout=timeout,
            )
        return httpx.Response(
            status_code=response.status,
            headers=[(name, value) for name, value in response.raw_headers],
            stream=_ResponseStream(response, request),
            extensions={"http_version": b"HTTP/1.1"},
            request=request,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class _NoCookies(httpx.Cookies):
    """A jar that keeps nothing: APIs called with a bearer token have no use for cookies, and
    httpx otherwise builds urllib request and response copies to extract them from every
    response (~5 % of a sender's CPU)."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None

    def set(self, name: str, value: str, domain: str = "", path: str = "/") -> None:
        raise ValueError("this client keeps no cookies")

    def update(self, cookies: object = None) -> None:  # type: ignore[override]  # as httpx.Cookies
        if cookies:
            raise ValueError("this client keeps no cookies")


# One for every client: nothing can be put in it.
_NO_COOKIES = _NoCookies()


class _CookielessClient(httpx.AsyncClient):
    @property
    def cookies(self) -> httpx.Cookies:
        return _NO_COOKIES

    @cookies.setter
    def cookies(self, cookies: object) -> None:
        if cookies:
            raise ValueError("this client keeps no cookies")


def async_client(
    *, timeout: httpx.Timeout, limits: httpx.Limits, headers: Mapping[str, str] | None = None
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` whose connections are aiohttp's, and which keeps no cookies."""
    return _CookielessClient(
        timeout=timeout, headers=headers, transport=AiohttpTransport(limits=limits)
    )
