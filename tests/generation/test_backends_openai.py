"""The `openai` backend against small in-thread servers on loopback: retries on 429/5xx, fail-fast and
one-line errors (unreachable server, bad key, wrong model), key from the environment, bounded concurrency.
(The backend against a real `retain serve` process is in test_serve.py.)"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest
import uvicorn
from fastapi import Request
from fastapi.responses import JSONResponse

from retain.errors import RetainError
from retain.generation.backends import BackendConfig, Completion, SamplingParams, make_backend
from retain.generation.serve import create_app


class SlowEcho:
    """Echoes the last turn and the seed; tracks how many chat() calls overlap."""

    name = "echo"

    def __init__(self, delay_s: float = 0.0):
        self.delay_s, self.active, self.peak, self.lock = delay_s, 0, 0, threading.Lock()

    def chat(self, conversations, params):
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        time.sleep(self.delay_s)
        with self.lock:
            self.active -= 1
        return [Completion(text=f"{c[-1]['content']} seed={params.seed}", prompt_tokens=1, completion_tokens=1) for c in conversations]


@contextlib.contextmanager
def serve_in_thread(app):
    """Run ``app`` with uvicorn on a pre-bound loopback socket (no port race); yield the /v1 base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def flaky(app, failures: list[int]):
    """Answer the first chat requests with the given status codes, then let them through."""
    seen = {"n": 0}

    @app.middleware("http")
    async def fail_first(request: Request, call_next):
        if request.url.path.endswith("/chat/completions") and seen["n"] < len(failures):
            seen["n"] += 1
            return JSONResponse({"error": {"message": "try later"}}, status_code=failures[seen["n"] - 1])
        return await call_next(request)

    return seen


def cfg(url: str, **kw) -> BackendConfig:
    return BackendConfig(kind="openai", model="echo", base_url=url, progress=False, **kw)


def convs(n: int):
    return [[{"role": "user", "content": f"c{i}"}] for i in range(n)]


def test_retries_429_and_5xx_then_succeeds():
    app = create_app(SlowEcho(), model_name="echo")
    seen = flaky(app, [429, 503])
    with serve_in_thread(app) as url:
        backend = make_backend(cfg(url, max_retries=3, max_concurrency=1))
        t0 = time.time()
        out = backend.chat(convs(1), SamplingParams(seed=5))
    assert [c.text for c in out] == ["c0 seed=5"]
    assert seen["n"] == 2
    assert time.time() - t0 >= 0.5 * 0.75 + 1.0 * 0.75  # two exponential, jittered back-offs


def test_gives_up_with_one_line_after_max_retries():
    app = create_app(SlowEcho(), model_name="echo")
    flaky(app, [500, 500, 500])
    with serve_in_thread(app) as url:
        backend = make_backend(cfg(url, max_retries=1))
        with pytest.raises(RetainError, match=r"HTTP 500") as e:
            backend.chat(convs(1), SamplingParams())
    assert "\n" not in str(e.value)


def test_each_retry_logs_its_cause(caplog):
    """Issue 22: the client's own retries logged only 'Retrying request in 0.45 seconds'."""
    app = create_app(SlowEcho(), model_name="echo")
    flaky(app, [503])
    with serve_in_thread(app) as url, caplog.at_level("WARNING", logger="retain"):
        out = make_backend(cfg(url, max_retries=2)).chat(convs(1), SamplingParams())
    assert [c.text for c in out] == ["c0 seed=0"]
    lines = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(lines) == 1 and "HTTP 503" in lines[0] and "retry 1 of 2" in lines[0] and "/chat/completions" in lines[0]


def test_a_server_that_does_not_answer_is_named_as_such(caplog):
    """A timeout is retried with its cause in the log, and the last error line says what happened."""
    app = create_app(SlowEcho(delay_s=1.5), model_name="echo", max_wait_ms=0)
    with serve_in_thread(app) as url, caplog.at_level("WARNING", logger="retain"):
        backend = make_backend(cfg(url, max_retries=1, timeout_s=0.4))
        with pytest.raises(RetainError, match=r"no answer within 0.4 s .*2 attempt") as e:
            backend.chat(convs(1), SamplingParams())
    assert "\n" not in str(e.value)
    assert any("no answer within 0.4 s" in r.getMessage() and "retry 1 of 1" in r.getMessage() for r in caplog.records)


def test_bounded_concurrency_order_and_per_conversation_seeds():
    echo = SlowEcho(delay_s=0.1)
    # batch_size=1: every request is its own backend call, so overlapping calls = requests in flight.
    app = create_app(echo, model_name="echo", batch_size=1, max_wait_ms=0)
    with serve_in_thread(app) as url:
        out = make_backend(cfg(url, max_concurrency=3)).chat(convs(9), SamplingParams(seed=100))
    assert [c.text for c in out] == [f"c{i} seed={100 + i}" for i in range(9)]
    assert echo.peak == 1  # the server runs the model on one thread ...
    assert out[0].prompt_tokens == 1 and out[0].finish_reason == "stop"


def test_concurrency_limit_is_respected():
    in_flight, peak, lock = [0], [0], threading.Lock()
    app = create_app(SlowEcho(), model_name="echo")

    @app.middleware("http")
    async def count(request: Request, call_next):  # ... so count requests in flight at the HTTP layer
        import asyncio

        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        await asyncio.sleep(0.05)
        try:
            return await call_next(request)
        finally:
            with lock:
                in_flight[0] -= 1

    with serve_in_thread(app) as url:
        make_backend(cfg(url, max_concurrency=3)).chat(convs(12), SamplingParams())
    assert peak[0] == 3


def test_unreachable_server_fails_fast_with_one_line():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.time()
    with pytest.raises(RetainError) as e:
        make_backend(cfg(f"http://127.0.0.1:{port}/v1", max_retries=4))
    msg = str(e.value)
    assert f"127.0.0.1:{port}" in msg and "retain serve" in msg and "--backend.base_url" in msg
    assert "\n" not in msg and time.time() - t0 < 5


def test_api_key_comes_from_the_named_env_var_and_is_never_echoed(monkeypatch):
    app = create_app(SlowEcho(), model_name="echo", api_key="k-123")
    with serve_in_thread(app) as url:
        monkeypatch.delenv("RETAIN_TEST_KEY", raising=False)
        with pytest.raises(RetainError, match=r"\$RETAIN_TEST_KEY") as e:
            make_backend(cfg(url, api_key_env="RETAIN_TEST_KEY"))
        monkeypatch.setenv("RETAIN_TEST_KEY", "wrong-key")
        with pytest.raises(RetainError) as e:
            make_backend(cfg(url, api_key_env="RETAIN_TEST_KEY"))
        assert "wrong-key" not in str(e.value)
        monkeypatch.setenv("RETAIN_TEST_KEY", "k-123")
        out = make_backend(cfg(url, api_key_env="RETAIN_TEST_KEY")).chat(convs(2), SamplingParams(seed=None))
        assert [c.text for c in out] == ["c0 seed=None", "c1 seed=None"]


def test_model_not_served_is_named():
    with serve_in_thread(create_app(SlowEcho(), model_name="echo")) as url:
        with pytest.raises(RetainError, match="--backend.model other: not served .* it serves echo"):
            make_backend(BackendConfig(kind="openai", model="other", base_url=url))
