"""The OpenAI-compatible agent: one chat completion per message.

Works with every server that speaks OpenAI's ``POST {base_url}/chat/completions``:

- OpenAI: ``https://api.openai.com/v1`` with an API key (``Authorization: Bearer``);
- Azure OpenAI: ``https://<resource>.openai.azure.com/openai/deployments/<deployment>`` with
  ``api_version`` set, which switches to Azure's ``api-key`` header and ``?api-version=`` query;
- Ollama (``http://localhost:11434/v1``), vLLM and the like, with or without a key.

The conversation goes as the system prompt, then the history (the user's messages as ``user``,
ours as ``assistant``), then the message to answer. A message without text (a photo without a
caption, a location) is shown to the model as its type in brackets, ``[image]``; a caption
follows its type, ``[image] my broken screen``.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import httpx
import msgspec

from shared_code.orchestrator.agents.base import (
    SILENT_MESSAGE_TYPES,
    AgentError,
    AgentReply,
    AgentRequest,
    TextReply,
    fit_text,
)
from shared_code.orchestrator.agents.upstream import post_with_retries
from shared_code.secrets import Secret

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_SYSTEM_PROMPT", "OpenAIChatAgent"]

DEFAULT_SYSTEM_PROMPT: Final = (
    "You are a helpful assistant answering customers on WhatsApp. Reply in the language the "
    "customer writes in. Keep answers short and conversational, in plain text: WhatsApp shows "
    "*bold*, _italic_ and ~strikethrough~ but not Markdown headings, tables or links in "
    "brackets. If you do not know something, say so instead of guessing."
)


class _ChatMessage(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    message: _ChatMessage


class _ChatCompletion(msgspec.Struct):
    choices: list[_Choice]


class OpenAIChatAgent:
    name = "openai"

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        base_url: str,
        model: str,
        api_key: Secret | None = None,
        api_version: str | None = None,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    ) -> None:
        self._http = http
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._model = model
        self._api_key = api_key
        self._api_version = api_version
        self._system_prompt = system_prompt

    async def reply(self, request: AgentRequest) -> AgentReply | None:
        if request.message.message_type in SILENT_MESSAGE_TYPES:
            return None
        try:
            response = await post_with_retries(
                self._http,
                self._url,
                json={"model": self._model, "messages": self.messages_for(request)},
                headers=self._auth_headers(),
                params={"api-version": self._api_version} if self._api_version else None,
            )
        except httpx.HTTPError as exc:
            raise AgentError(f"chat completions request failed ({type(exc).__name__})") from exc
        if not response.is_success:
            raise AgentError(f"chat completions answered HTTP {response.status_code}")
        try:
            completion = msgspec.json.decode(response.content, type=_ChatCompletion)
        except msgspec.DecodeError as exc:
            raise AgentError(f"chat completions answer is not usable: {exc}") from exc
        if not completion.choices:
            raise AgentError("chat completions answer has no choices")
        content = (completion.choices[0].message.content or "").strip()
        if not content:
            raise AgentError("chat completions answer has no text content")
        return TextReply(body=fit_text(content))

    def messages_for(self, request: AgentRequest) -> list[dict[str, Any]]:
        """The ``messages`` list sent for ``request``."""
        messages: list[dict[str, Any]] = [{"role": "system", "content": self._system_prompt}]
        for entry in request.history:
            role = "user" if entry.direction == "inbound" else "assistant"
            messages.append({"role": role, "content": _content(entry.message_type, entry.text)})
        message = request.message
        messages.append({"role": "user", "content": _content(message.message_type, message.text)})
        return messages

    def _auth_headers(self) -> dict[str, str]:
        if self._api_key is None:
            return {}
        if self._api_version:
            return {"api-key": self._api_key.reveal()}
        return {"Authorization": f"Bearer {self._api_key.reveal()}"}


# Types whose text is what was said; for the others (media) the text is a caption.
_SPOKEN_TYPES: Final = frozenset({"text", "interactive", "button", "template"})


def _content(message_type: str, text: str | None) -> str:
    if not (text and text.strip()):
        return f"[{message_type}]"
    if message_type in _SPOKEN_TYPES:
        return text
    return f"[{message_type}] {text}"
