"""Indexing a FunctionApp the way the Python worker does, and invoking its functions.

The worker calls a function with its trigger value under the trigger's argument name, plus
``context`` when the function declares it. Async functions run on the event loop; sync ones in
a thread pool (``PYTHON_THREADPOOL_THREAD_COUNT``, like the worker). Functions that need
bindings the dev host does not provide are skipped with a warning instead of failing at call
time.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import functools
import inspect
import logging
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final, Protocol

import azure.functions as func

__all__ = [
    "FunctionSpec",
    "FunctionTimeoutError",
    "Invoker",
    "SettingMissingError",
    "index_functions",
    "resolve_setting",
]

logger = logging.getLogger(__name__)

_SETTING_REFERENCE: Final = re.compile(r"%([^%]+)%")
# The only binding besides the trigger that the dev host fills: an HTTP function's return value.
_HTTP_RETURN: Final = ("http", "$return")


class SettingMissingError(LookupError):
    """A ``%NAME%`` reference names an app setting that is not set."""


class FunctionTimeoutError(TimeoutError):
    """The function ran longer than host.json's functionTimeout."""


class _IndexableApp(Protocol):
    functions_bindings: dict[Any, Any] | None

    def get_functions(self) -> list[Any]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class FunctionSpec:
    name: str
    trigger_type: str
    # The trigger's binding as in function.json, enums flattened to their values.
    binding: Mapping[str, Any]
    arg_name: str
    user_function: Callable[..., Any]
    is_async: bool
    wants_context: bool


def resolve_setting(value: str, environ: Mapping[str, str] | None = None) -> str:
    """Replace ``%NAME%`` references with app settings, as binding expressions do."""
    env = os.environ if environ is None else environ

    def lookup(match: re.Match[str]) -> str:
        name = match[1]
        setting = env.get(name, "").strip()
        if not setting:
            raise SettingMissingError(f"app setting {name} is not set (referenced as %{name}%)")
        return setting

    return _SETTING_REFERENCE.sub(lookup, value)


def index_functions(app: _IndexableApp) -> list[FunctionSpec]:
    """Every function of ``app`` the dev host can call; the rest are skipped with a warning."""
    specs = []
    # get_functions() records the names it has seen and rejects them the next time, because the
    # worker indexes once per process; a host started twice in one process (tests) must reset it.
    if getattr(app, "functions_bindings", None):
        app.functions_bindings = None
    for function in app.get_functions():
        name = function.get_function_name()
        trigger = function.get_trigger()
        if trigger is None:
            logger.warning("function %s has no trigger; skipped", name)
            continue
        binding = _plain(trigger.get_dict_repr())
        arg_name = str(binding.get("name", ""))
        extra = [
            f"{b.get('type')} ({b.get('name')})"
            for b in (_plain(other.get_dict_repr()) for other in function.get_bindings())
            if b.get("name") != arg_name and (b.get("type"), b.get("name")) != _HTTP_RETURN
        ]
        if extra:
            logger.warning(
                "function %s uses binding(s) the local host does not support: %s; skipped",
                name,
                ", ".join(extra),
            )
            continue
        user_function = function.get_user_function()
        parameters = inspect.signature(user_function).parameters
        missing = [
            p.name
            for p in parameters.values()
            if p.name not in (arg_name, "context")
            and p.default is inspect.Parameter.empty
            and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        ]
        if missing:
            logger.warning(
                "function %s has parameter(s) without a binding: %s; skipped",
                name,
                ", ".join(missing),
            )
            continue
        specs.append(
            FunctionSpec(
                name=name,
                trigger_type=str(binding.get("type", "")),
                binding=binding,
                arg_name=arg_name,
                user_function=user_function,
                is_async=inspect.iscoroutinefunction(user_function),
                wants_context="context" in parameters and arg_name != "context",
            )
        )
    return specs


class Invoker:
    """Calls user functions: async ones on the loop, sync ones in the worker's thread pool."""

    def __init__(
        self,
        *,
        function_timeout: timedelta | None = None,
        thread_count: int | None = None,
        function_directory: str = "",
    ) -> None:
        if thread_count is None:
            configured = os.environ.get("PYTHON_THREADPOOL_THREAD_COUNT", "").strip()
            thread_count = int(configured) if configured.isdigit() and int(configured) > 0 else None
        # The worker's default for Python 3.9+: the executor's own min(32, cpus + 4).
        self._executor = ThreadPoolExecutor(max_workers=thread_count, thread_name_prefix="function")
        self._timeout = None if function_timeout is None else function_timeout.total_seconds()
        self._directory = function_directory

    async def invoke(self, spec: FunctionSpec, trigger_value: Any) -> Any:
        kwargs = {spec.arg_name: trigger_value}
        if spec.wants_context:
            kwargs["context"] = _Context(spec.name, self._directory)
        if self._timeout is None:
            return await self._call(spec, kwargs)
        try:
            async with asyncio.timeout(self._timeout):
                return await self._call(spec, kwargs)
        except TimeoutError as error:
            raise FunctionTimeoutError(
                f"function {spec.name} ran longer than functionTimeout ({self._timeout:g} s)"
            ) from error

    async def _call(self, spec: FunctionSpec, kwargs: dict[str, Any]) -> Any:
        if spec.is_async:
            return await spec.user_function(**kwargs)
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        result = await loop.run_in_executor(
            self._executor, functools.partial(context.run, spec.user_function, **kwargs)
        )
        if inspect.isawaitable(result):
            # A sync wrapper around a coroutine function: finish it where coroutines run.
            result = await result
        return result

    def close(self) -> None:
        """Stop the thread pool; a sync function still running keeps its thread to the end."""
        self._executor.shutdown(wait=False, cancel_futures=True)


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def describe_methods(methods: Iterable[str] | None) -> str:
    return ",".join(methods) if methods else "ALL"


_thread_local = threading.local()


class _TraceContext(func._abc.TraceContext):
    @property
    def trace_state(self) -> str:
        return ""

    @property
    def trace_parent(self) -> str:
        return ""

    @property
    def attributes(self) -> dict[str, str]:
        return {}


class _RetryContext(func._abc.RetryContext):
    @property
    def retry_count(self) -> int:
        return 0

    @property
    def max_retry_count(self) -> int:
        return 0

    @property
    def exception(self) -> Any:
        return None


class _Context(func.Context):
    """What the worker passes as ``context``: enough for code that logs the invocation id."""

    def __init__(self, function_name: str, function_directory: str) -> None:
        self._invocation_id = str(uuid.uuid4())
        self._function_name = function_name
        self._function_directory = function_directory

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self) -> Any:
        return _thread_local

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def function_directory(self) -> str:
        return self._function_directory

    @property
    def trace_context(self) -> Any:
        return _TraceContext()

    @property
    def retry_context(self) -> Any:
        return _RetryContext()
