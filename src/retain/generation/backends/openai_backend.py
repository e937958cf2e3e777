"""``openai`` backend: any OpenAI-compatible chat-completions server (`retain serve`, vLLM, SGLang,
llama.cpp server, TGI).

- The official ``openai`` client does the HTTP work; retries are ours (:meth:`OpenAIBackend._one`), on
  408/409/429/5xx, timeouts and connection errors, with the client's schedule: exponential backoff from
  0.5 s (capped at 8 s) with up to 25 % jitter, honouring ``Retry-After`` (up to 60 s);
  ``BackendConfig.max_retries`` sets how many. Each retry logs one warning line with its cause
  (``HTTP 503 (...)``, ``no answer within 120 s``, ``connection refused``): the client's own retries logged
  only ``Retrying request in 0.45 seconds``, which hid a server that had stopped answering.
- Bounded concurrency: a thread pool of ``max_concurrency`` workers, each making blocking calls with the
  sync client (thread-safe, one shared connection pool). Threads rather than asyncio so ``chat()`` also
  works when the caller already runs an event loop (notebooks, servers).
- A preflight ``GET /models`` (short connect timeout, no retries) turns an unreachable server, a wrong
  key or a wrong model name into one ``RetainError`` line before any work is queued.
- The API key is read from the environment variable named by ``api_key_env`` and never logged; when it is
  unset a dummy key is sent, which local servers accept.
- Conversation ``i`` of a call is sent with ``seed + i``: servers with per-request seeds (vLLM) are then
  reproducible whatever their batching; identical prompts still get different samples.
"""

from __future__ import annotations

import logging
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import openai
from retain.utils.console import tqdm

from retain.errors import RetainError
from retain.generation.backends.base import Completion, Messages, SamplingParams, register_backend
from retain.generation.backends.config import BackendConfig

DUMMY_KEY = "sk-no-key-required"
PREFLIGHT_CONNECT_S = 5.0
RETRY_STATUS = frozenset({408, 409, 429})
"""Statuses retried besides 5xx (as the openai client does)."""
MAX_RETRY_AFTER_S = 60.0

log = logging.getLogger(__name__)


def _retry_delay(attempt: int, error: Exception) -> float:
    """Seconds before retry ``attempt`` (0-based): the server's ``Retry-After`` when it gives a sane one,
    else ``min(0.5 * 2**attempt, 8)`` less up to 25 % jitter."""
    response = getattr(error, "response", None)
    after = response.headers.get("retry-after") if response is not None else None
    try:
        if after is not None and 0 <= float(after) <= MAX_RETRY_AFTER_S:
            return float(after)
    except ValueError:
        pass
    return min(0.5 * 2**attempt, 8.0) * (1 - 0.25 * random.random())


@register_backend("openai")
class OpenAIBackend:
    """Chat completions over HTTP with bounded concurrency and retries (see the module docstring)."""

    def __init__(self, cfg: BackendConfig | None = None, check: bool = True):
        self.cfg = cfg = cfg or BackendConfig(kind="openai")
        self.name = cfg.model
        self.base_url = cfg.base_url.rstrip("/")
        key = os.environ.get(cfg.api_key_env) or DUMMY_KEY
        self.client = openai.OpenAI(
            api_key=key,
            base_url=self.base_url,
            timeout=openai.Timeout(cfg.timeout_s, connect=min(cfg.timeout_s, PREFLIGHT_CONNECT_S)),
            max_retries=0,  # retried in _one, which logs why
        )
        if check:
            self.check_server()

    def _unreachable(self, why: str) -> RetainError:
        return RetainError(
            f"--backend.base_url {self.base_url}: server unreachable ({why}); start one with "
            f"`retain serve --port <port>` (or vLLM/SGLang/llama.cpp/TGI) or fix --backend.base_url"
        )

    def check_server(self) -> list[str]:
        """Fail fast: GET /models once, without retries. Returns the model ids the server lists."""
        try:
            models = self.client.with_options(max_retries=0, timeout=min(self.cfg.timeout_s, 10.0)).models.list()
            ids = [m.id for m in models.data]
        except openai.APIConnectionError as e:  # APITimeoutError is a subclass
            raise self._unreachable(type(e).__name__) from None
        except openai.AuthenticationError:
            raise RetainError(
                f"--backend.base_url {self.base_url}: the server rejected the API key (401); "
                f"export it as ${self.cfg.api_key_env} or set --backend.api_key_env"
            ) from None
        except openai.APIStatusError:
            return []  # some servers do not implement /models; the first request will tell
        if ids and self.cfg.model not in ids:
            raise RetainError(
                f"--backend.model {self.cfg.model}: not served at {self.base_url}; it serves "
                f"{', '.join(ids[:5])}; set --backend.model to one of them"
            )
        return ids

    def _one(self, messages: Messages, params: SamplingParams, seed: int | None) -> Completion:
        kwargs = dict(temperature=max(params.temperature, 0.0), max_tokens=params.max_new_tokens)
        if params.temperature > 0:
            kwargs["top_p"] = params.top_p
        if seed is not None:
            kwargs["seed"] = seed
        url, tries = f"{self.base_url}/chat/completions", self.cfg.max_retries + 1
        for attempt in range(tries):
            try:
                r = self.client.chat.completions.create(model=self.cfg.model, messages=list(messages), **kwargs)
                break
            except openai.APITimeoutError as e:  # a subclass of APIConnectionError: the server took the request
                error, cause = e, f"no answer within {self.cfg.timeout_s:g} s (APITimeoutError)"
            except openai.APIConnectionError as e:
                error, cause = e, f"{type(e).__name__}: {e.__cause__ or e}"
            except openai.APIStatusError as e:
                msg = str(e).strip().splitlines()[0][:200]
                if e.status_code not in RETRY_STATUS and e.status_code < 500 or attempt + 1 == tries:
                    raise RetainError(
                        f"{url}: HTTP {e.status_code} after {attempt + 1} attempt(s) ({msg}); check the server "
                        "log, --backend.model and --backend.max_concurrency"
                    ) from None
                error, cause = e, f"HTTP {e.status_code} ({msg})"
            if attempt + 1 == tries:
                raise RetainError(f"{url}: {cause}, {tries} attempt(s); check that the server is up and answering "
                                  "(its log, GET /health) or raise --backend.timeout_s") from None
            delay = _retry_delay(attempt, error)
            log.warning("%s: %s; retry %d of %d in %.1f s", url, cause, attempt + 1, tries - 1, delay)
            time.sleep(delay)
        choice = r.choices[0]
        usage = r.usage
        return Completion(
            text=(choice.message.content or "").strip(),
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            finish_reason="length" if choice.finish_reason == "length" else "stop",
        )

    def chat(self, conversations: Sequence[Messages], params: SamplingParams) -> list[Completion]:
        """One completion per conversation, in input order; ``max_concurrency`` requests in flight."""
        if not conversations:
            return []
        seeds = [None if params.seed is None else params.seed + i for i in range(len(conversations))]
        workers = min(self.cfg.max_concurrency, len(conversations))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="retain-openai") as pool:
            futures = [pool.submit(self._one, c, params, s) for c, s in zip(conversations, seeds)]
            bar = tqdm(total=len(futures), desc="requests", unit="req", disable=not self.cfg.progress, leave=False)
            try:
                for f in futures:  # in input order; a failure cancels what has not started
                    f.add_done_callback(lambda _: bar.update(1))
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
            finally:
                bar.close()
