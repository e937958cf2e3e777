"""Request schema of ``retain serve``'s ``POST /v1/chat/completions`` (pydantic; imported lazily).

- Only what the server honours is accepted with meaning: messages, n, temperature, top_p,
  max_tokens / max_completion_tokens, seed. Unknown fields are ignored (clients send many), but
  ``stream=true`` and a non-empty ``stop`` are rejected, since silently ignoring them would change
  what the client gets.
- Content may be a string or a list of ``{"type": "text", "text": ...}`` parts (joined), as the
  OpenAI API allows.
- Responses are built with the ``openai`` package's own ``ChatCompletion`` model, so the JSON has
  exactly the shape clients parse.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def as_dict(self) -> dict[str, str]:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        # 'developer' is the newer name of 'system'; HF chat templates know only 'system'.
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = ""
    messages: list[ChatMessage] = Field(min_length=1)
    n: int = Field(1, ge=1, le=64)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)  # int64, as OpenAI; torch takes seed + batch
    stream: bool = False
    stop: str | list[str] | None = None

    @field_validator("stream")
    @classmethod
    def _no_stream(cls, v: bool) -> bool:
        if v:
            raise ValueError("streaming is not supported by retain serve; send stream=false")
        return v

    @field_validator("stop")
    @classmethod
    def _no_stop(cls, v: str | list[str] | None) -> None:
        if v:
            raise ValueError("stop sequences are not supported by retain serve; generation stops at end of turn")
        return None

    @model_validator(mode="after")
    def _last_turn(self) -> "ChatRequest":
        if self.messages[-1].role == "assistant":
            raise ValueError("the last message must not be from the assistant (continuing a reply is not supported)")
        return self

    def budget(self, default: int) -> int:
        """max_completion_tokens (the newer name) wins over max_tokens; else the server default."""
        return self.max_completion_tokens or self.max_tokens or default
