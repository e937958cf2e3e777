"""``retain serve``: an OpenAI-compatible chat-completions server over the in-process ``hf`` backend.

- Endpoints: ``POST /v1/chat/completions`` (non-streaming), ``GET /v1/models``, ``GET /health``.
- Micro-batching is the point: concurrent requests are queued, and a single loop collects up to
  ``batch_size`` of them (waiting at most ``max_wait_ms`` for the batch to fill) into one backend call,
  so N clients cost about one batched ``generate`` instead of N serial ones. Requests with different
  temperature / top_p / max_tokens are generated in separate groups of the same round.
- Seeds are per batch (``model.generate`` samples all rows from one RNG): a batch uses the seed of its
  first request, so a seeded request is reproducible only when batched with the same requests. For
  bit-reproducible corpora use the in-process ``hf`` backend.
- The model runs on one worker thread; the event loop stays free to accept and queue requests.
- Prefix cache across requests: the ``hf`` backend keeps the KV of recent prompt prefixes in an LRU
  bounded by ``prefix_cache_tokens`` (see ``backends/prefix_cache.py``), and a request re-uses the
  longest prefix it shares with any cached prompt. A TG client (the ``openai`` backend) sends a parent's
  children and its follow-up request with the same root-to-parent dialogue, so only their new turns are
  prefilled. ``GET /health`` reports the cache's entries, tokens, hits and re-used tokens.
- Requests are bounded before they cost anything: a body over ``max_body_bytes`` gets HTTP 413 (a body
  without ``Content-Length`` gets 411), a prompt that does not fit the model's context window with its
  completion budget gets HTTP 400 naming ``messages`` and both lengths (tokens counted on a private copy
  of the tokenizer, off the event loop), and a ``model`` other than the served names gets 404
  ``model_not_found``, as OpenAI and vLLM answer. An empty ``model`` means the served one.
- The served id is short and stable (:func:`served_names`): ``smollm2`` for the bundled model, a fine-tune's
  run name for ``runs/x/model`` (``x``); ``--model`` as given is accepted and listed too.
- A request whose client closed its connection is dropped (its queued choices are cancelled; the batching
  loop skips them) and logged as 499; every request logs one INFO line (method, path, status, tokens, ms).
  The key and body checks are a plain ASGI middleware: Starlette's ``@app.middleware("http")`` hides a
  client's disconnect from the route. Before, a client's timeout-then-retry left the abandoned copy queued
  and generated anyway: a server slower than the client's timeout got more work from every retry and
  stopped answering, while ``/health`` still did (issue 22; ``test_requests_whose_client_gave_up_are_not_generated``).
- Top-level imports are stdlib and torch-free retain modules only, so ``retain --help`` does not pay for torch / fastapi.
- Binding to a non-loopback host exposes the model; set ``api_key_env`` to require a bearer key (compared
  in constant time). With a key, the interactive docs (``/docs``, ``/redoc``, ``/openapi.json``) are off.
"""

# No `from __future__ import annotations`: FastAPI must see the real request type inside create_app.
import asyncio
import hmac
import logging
import os
import time
import uuid
import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from retain.errors import RetainError
from retain.generation.backends.config import BackendConfig

if TYPE_CHECKING:
    from retain.generation.backends.base import Backend, Completion, SamplingParams

log = logging.getLogger(__name__)


@dataclass
class ServeConfig:
    """retain serve: an OpenAI-compatible /v1/chat/completions endpoint over the in-process hf backend."""

    deprecated_flags: ClassVar[dict[str, str]] = {
        k: f"backend.{k}" for k in ("batch_size", "dtype", "device", "trust_remote_code", "prefix_cache_tokens")}

    model: str = "smollm2"
    """'smollm2' (bundled), a local HF model folder or a hub id."""
    host: str = "127.0.0.1"
    """Interface to bind; the default is reachable from this machine only."""
    port: int = 8000
    """TCP port."""
    backend: BackendConfig = field(default_factory=lambda: BackendConfig(progress=False))
    """How the model runs (kind hf; the model is --model): --backend.batch_size is the most requests (choices)
    generated together in one micro-batch; also --backend.dtype, --backend.device, --backend.trust_remote_code,
    --backend.prefix_cache_tokens (prompt-prefix KV kept across requests, LRU, in tokens; 46 KB per token for
    SmolLM2-135M in float32: 189 MB for 4,096)."""
    max_wait_ms: float = 10.0
    """How long the batching loop waits for a batch to fill once a request is queued (ms)."""
    max_new_tokens: int = 256
    """Default completion budget when a request sets neither max_tokens nor max_completion_tokens."""
    max_tokens_limit: int = 4096
    """Largest completion budget a request may ask for (larger -> HTTP 400)."""
    max_queue: int = 4096
    """Queued choices beyond this get HTTP 429 (clients back off and retry)."""
    served_model_name: str | None = None
    """Model id reported by /v1/models and in responses (then the only name served). Default: a short name:
    'smollm2' for the bundled model, a local folder's name (for a run's model/ folder, the run folder's name),
    else --model; a request's 'model' may then also be --model as given."""
    api_key_env: str | None = None
    """If set, the name of an environment variable holding the key clients must send as 'Authorization: Bearer'."""
    max_body_bytes: int = 2_000_000
    """Largest request body accepted (bytes); larger -> HTTP 413. 2 MB holds far more text than an 8k context."""

    def __post_init__(self) -> None:
        if self.backend.kind != "hf":
            raise RetainError(f"--backend.kind {self.backend.kind}: retain serve runs the model in this process; "
                              "use kind hf (point clients of another server at it directly)")
        checks = [("port", 0 < self.port < 65536, "in 1..65535"), ("max_new_tokens", self.max_new_tokens >= 1, ">= 1"),
                  ("max_tokens_limit", self.max_tokens_limit >= 1, ">= 1"), ("max_queue", self.max_queue >= 1, ">= 1"),
                  ("max_body_bytes", self.max_body_bytes >= 1, ">= 1"), ("max_wait_ms", self.max_wait_ms >= 0, ">= 0")]
        for name, ok, bound in checks:
            if not ok:
                raise RetainError(f"--{name} {getattr(self, name)}: must be {bound}")


@dataclass
class _Item:
    messages: list[dict[str, str]]
    params: "SamplingParams"
    future: asyncio.Future


class MicroBatcher:
    """Queue + batching loop: ``submit`` awaits completions, ``run`` turns the queue into backend calls."""

    def __init__(self, backend: "Backend", batch_size: int = 32, max_wait_ms: float = 10.0, max_queue: int = 4096):
        from concurrent.futures import ThreadPoolExecutor

        self.backend, self.batch_size, self.max_wait_s = backend, batch_size, max_wait_ms / 1000
        self.queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=max_queue)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retain-serve-model")
        self.calls: list[int] = []
        """Size of every backend.chat call made (for /health and tests)."""

    async def submit(self, conversations: list[list[dict[str, str]]], params: "SamplingParams") -> list["Completion"]:
        loop = asyncio.get_running_loop()
        if self.queue.qsize() + len(conversations) > self.queue.maxsize:
            raise OverflowError("queue full")
        items = [_Item(c, params, loop.create_future()) for c in conversations]
        for it in items:
            self.queue.put_nowait(it)
        return list(await asyncio.gather(*(it.future for it in items)))

    async def _collect(self) -> list[_Item]:
        """Block for one item, then take up to batch_size, waiting at most max_wait for more."""
        loop = asyncio.get_running_loop()
        batch = [await self.queue.get()]
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.batch_size:
            try:
                batch.append(self.queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), left))
            except asyncio.TimeoutError:
                break
        return [it for it in batch if not it.future.done()]  # drop requests whose client went away

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            groups: dict[tuple, list[_Item]] = {}
            for it in await self._collect():
                p = it.params  # the seed is not part of the key: see the module docstring
                groups.setdefault((p.temperature, p.top_p, p.max_new_tokens), []).append(it)
            for items in groups.values():
                params = items[0].params
                try:
                    self.calls.append(len(items))
                    outs = await loop.run_in_executor(self.executor, self.backend.chat, [i.messages for i in items], params)
                except Exception as e:  # noqa: BLE001 - reported to the waiting requests, the loop goes on
                    for it in items:
                        if not it.future.done():
                            it.future.set_exception(e)
                    continue
                for it, out in zip(items, outs):
                    if not it.future.done():
                        it.future.set_result(out)


class _ClientGone(Exception):
    """The client closed its connection while its request waited for an answer."""


DISCONNECT_POLL_S = 0.25
"""How often a waiting request checks whether its client is still connected (seconds)."""


async def _unless_disconnected(request: Any, work: Any) -> Any:
    """Await the coroutine ``work``; if the client disconnects first, cancel it and raise :class:`_ClientGone`.

    Cancelling the submission cancels its choices' futures, and the batching loop skips done futures, so
    work that no client waits for any more is never generated. Without this, a client's timeout and
    retry queued the same request again while the abandoned copy still waited its turn: once a server was
    slower than the client's timeout, every retry added work, and it fell further behind (issue 22)."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise _ClientGone
    finally:
        if not task.done():
            task.cancel()


class _GateAndLog:
    """Plain ASGI middleware: answers what ``gate(request)`` refuses (a JSONResponse) without running the
    route, and logs one INFO line per request: ``POST /v1/chat/completions 200 57 tokens 812 ms``.

    Plain ASGI rather than ``@app.middleware("http")``: Starlette's ``BaseHTTPMiddleware`` hides a client's
    disconnect from the route (``request.is_disconnected()`` stays False), so abandoned requests were
    generated anyway (see :func:`_unless_disconnected`)."""

    def __init__(self, app: Any, gate: Any):
        self.app, self.gate = app, gate

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from starlette.requests import Request

        start, status = time.perf_counter(), [500]

        async def send_noting_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            refused = self.gate(Request(scope, receive))
            if refused is not None:
                await refused(scope, receive, send_noting_status)
            else:
                await self.app(scope, receive, send_noting_status)
        finally:
            tokens = scope.get("state", {}).get("tokens")
            log.info("%s %s %d%s %.0f ms", scope["method"], scope["path"], status[0],
                     "" if tokens is None else f" {tokens} tokens", 1000 * (time.perf_counter() - start))


def served_names(model: str, served_model_name: str | None = None) -> tuple[str, tuple[str, ...]]:
    """(the id ``retain serve`` reports, the other names a request's ``model`` may carry) for ``--model``.

    The id is ``served_model_name`` when given (then it is the only name), else short and stable:
    ``smollm2`` for the bundled model (any of its names or its cache folder, :func:`retain.assets.model_name`),
    a local folder's name (for a folder named ``model``, as ``retain train`` writes in its run folder, the
    run folder's name: ``runs/lora/model`` -> ``lora``), else ``model`` itself (a hub id); ``model`` as given
    is accepted too."""
    from pathlib import Path

    from retain.assets import model_name

    if served_model_name:
        return served_model_name, ()
    canonical = model_name(model)
    folder = Path(model).expanduser()
    if canonical != model or not folder.is_dir():
        served = canonical
    else:
        folder = folder.resolve()
        served = folder.parent.name if folder.name == "model" and folder.parent.name else folder.name
    return served, tuple(dict.fromkeys(n for n in (model, canonical) if n != served))


def create_app(
    backend: "Backend",
    model_name: str | None = None,
    batch_size: int = 32,
    max_wait_ms: float = 10.0,
    max_new_tokens: int = 256,
    max_tokens_limit: int = 4096,
    max_queue: int = 4096,
    api_key: str | None = None,
    max_body_bytes: int = 2_000_000,
    aliases: tuple[str, ...] = (),
):
    """Build the FastAPI app over ``backend`` (any :class:`Backend`; tests pass a fake one). ``model_name``:
    the served id (default: the backend's name); ``aliases``: other names a request's ``model`` may carry,
    listed after it at ``/v1/models`` (see :func:`served_names`).

    The context-window check needs ``backend.context_length`` and ``backend.count_tokens(messages)``
    (the ``hf`` backend has both); a backend without them is not checked."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from openai.types.chat import ChatCompletion

    from retain.generation.backends.base import SamplingParams
    from retain.generation.serve_schema import ChatRequest

    name = model_name or backend.name
    batcher = MicroBatcher(backend, batch_size, max_wait_ms, max_queue)

    @asynccontextmanager
    async def lifespan(app):
        task = asyncio.create_task(batcher.run())
        yield
        task.cancel()
        batcher.executor.shutdown(wait=False, cancel_futures=True)

    # With a key the server is private: no /docs, /redoc or /openapi.json (the schema unauthenticated, the
    # pages' scripts from a CDN). Without one (loopback by default) they stay, for trying requests by hand.
    private = {"docs_url": None, "redoc_url": None, "openapi_url": None} if api_key else {}
    app = FastAPI(title="retain serve", lifespan=lifespan, **private)
    app.state.batcher = batcher

    def error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
              code: str | None = None) -> JSONResponse:
        body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
        return JSONResponse(body, status_code=status, headers={"Retry-After": "1"} if status == 429 else None)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        e = exc.errors()[0]
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        if e.get("type") == "json_invalid":
            return error(400, "body: not valid JSON")
        return error(400, f"{where or 'body'}: {e.get('msg', 'invalid')}", param=where or None)

    expected = f"Bearer {api_key}".encode() if api_key else None

    def gate(request: Request) -> JSONResponse | None:
        """The key (on /v1/*) and the body bounds (on POST), checked before the route runs."""
        if expected is not None and request.url.path.startswith("/v1/"):
            sent = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(sent, expected):  # constant time: no timing hint about the key
                return error(401, "missing or wrong API key (Authorization: Bearer ...)", "authentication_error")
        if request.method == "POST":
            length = request.headers.get("content-length")
            if length is None:
                return error(411, "body: send a Content-Length header (chunked request bodies are not accepted)")
            if not length.isdigit() or int(length) > max_body_bytes:
                return error(413, f"body: {length} bytes exceeds this server's limit of {max_body_bytes} bytes "
                                  "(retain serve --max_body_bytes)")
        return None

    app.add_middleware(_GateAndLog, gate=gate)
    context = getattr(backend, "context_length", None)
    count_tokens = getattr(backend, "count_tokens", None)
    if context and count_tokens is not None:
        # Make the counting tokenizer's private copy now, before the model thread uses the tokenizer: copying
        # it later, from another thread, could meet the model thread inside the same Rust tokenizer.
        count_tokens([{"role": "user", "content": "x"}])

    @app.get("/health")
    async def health() -> dict[str, Any]:
        calls = batcher.calls
        body = {"status": "ok", "model": name, "queued": batcher.queue.qsize(), "batches": len(calls),
                "mean_batch": (sum(calls) / len(calls)) if calls else 0.0}
        cache = getattr(backend, "prefix_cache", None)
        if cache is not None:
            body["prefix_cache"] = {"entries": len(cache), "tokens": cache.tokens, "max_tokens": cache.max_tokens,
                                    "hits": cache.hits, "reused_tokens": cache.reused_tokens}
        return body

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "retain"}
                                           for n in (name, *aliases)]}  # the served id first

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest, request: Request):
        if req.model and req.model != name and req.model not in aliases:
            return error(404, f"The model `{req.model}` does not exist; this server serves `{name}`",
                         param="model", code="model_not_found")
        budget = req.budget(max_new_tokens)
        if budget > max_tokens_limit:
            return error(400, f"max_tokens: {budget} exceeds this server's limit {max_tokens_limit}", param="max_tokens")
        params = SamplingParams(max_new_tokens=budget, temperature=req.temperature, top_p=req.top_p, seed=req.seed)
        messages = [m.as_dict() for m in req.messages]
        if context and count_tokens is not None:
            try:
                n_prompt = await asyncio.to_thread(count_tokens, messages)
            except RetainError as e:
                return error(400, str(e), param="messages")
            if n_prompt >= context:
                return error(400, f"messages: the prompt is {n_prompt} tokens, the model's context window is {context} "
                                  "tokens; shorten the conversation", param="messages")
            if n_prompt + budget > context:
                return error(400, f"messages: the prompt is {n_prompt} tokens and max_tokens asks for {budget} more, "
                                  f"over the model's context window of {context} tokens; shorten the conversation "
                                  "or lower max_tokens", param="messages")
        try:
            outs = await _unless_disconnected(request, batcher.submit([messages] * req.n, params))
        except _ClientGone:
            return error(499, "client closed the request before its answer was ready")
        except OverflowError:
            return error(429, "server busy: request queue is full; retry later", "rate_limit_error")
        except RetainError as e:  # e.g. the chat template rejects the conversation
            return error(400, str(e))
        except Exception as e:  # noqa: BLE001 - a JSON error the client can show, not a bare 500 page
            return error(500, f"generation failed: {type(e).__name__}: {e}", "server_error")
        response = ChatCompletion(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            object="chat.completion",
            created=int(time.time()),
            model=name,
            choices=[
                {"index": i, "message": {"role": "assistant", "content": o.text}, "finish_reason": o.finish_reason}
                for i, o in enumerate(outs)
            ],
            usage={
                "prompt_tokens": outs[0].prompt_tokens,
                "completion_tokens": sum(o.completion_tokens for o in outs),
                "total_tokens": outs[0].prompt_tokens + sum(o.completion_tokens for o in outs),
            },
        )
        request.state.tokens = response.usage.total_tokens  # for the request log line
        return response.model_dump(exclude_none=True)

    return app


def _check_port_free(host: str, port: int) -> None:
    """Fail with one line before loading the model, rather than after, when the port is taken."""
    import socket

    try:
        with socket.create_server((host, port)):
            pass
    except OSError as e:
        raise RetainError(f"--host {host} --port {port}: cannot bind ({e.strerror}); pick another --port") from None


def run_serve(cfg: ServeConfig) -> int:
    """Load the model, then serve until interrupted."""
    import uvicorn

    from retain.generation.backends.config import make_backend
    from retain.utils import console

    _check_port_free(cfg.host, cfg.port)
    api_key = None
    if cfg.api_key_env:
        api_key = os.environ.get(cfg.api_key_env)
        if not api_key:
            raise RetainError(f"--api_key_env {cfg.api_key_env}: environment variable is unset or empty; export it first")
    backend = make_backend(dataclasses.replace(cfg.backend, kind="hf", model=cfg.model, progress=False))
    name, aliases = served_names(cfg.model, cfg.served_model_name)
    app = create_app(backend, name, cfg.backend.batch_size, cfg.max_wait_ms, cfg.max_new_tokens, cfg.max_tokens_limit,
                     cfg.max_queue, api_key, cfg.max_body_bytes, aliases)
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        console.warn(f"serving on {cfg.host} without an API key; anyone who can reach it can use the model")
    console.status(f"retain serve: {name} at http://{cfg.host}:{cfg.port}/v1 (batch_size={cfg.backend.batch_size}, "
                   f"prefix_cache_tokens={cfg.backend.prefix_cache_tokens})")
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")
    return 0
