"""`retain serve`: the app over a fake backend (validation, micro-batching, n, queue limit), and a real
`retain serve` subprocess on loopback driven by the official `openai` client and by the `openai` backend."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from retain.errors import RetainError
from retain.generation.backends import BackendConfig, Completion, SamplingParams, make_backend
from retain.generation.serve import create_app

from .test_backends_openai import serve_in_thread


class EchoBackend:
    """Deterministic stand-in: echoes the last user turn and the sampling params; records call sizes."""

    name = "echo"

    def __init__(self, delay_s: float = 0.0):
        self.calls: list[int] = []
        self.delay_s = delay_s

    def chat(self, conversations, params):
        self.calls.append(len(conversations))
        time.sleep(self.delay_s)
        return [
            Completion(text=f"{c[-1]['content']}|t={params.temperature}|max={params.max_new_tokens}",
                       prompt_tokens=len(c), completion_tokens=3, finish_reason="length")
            for c in conversations
        ]


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_chat_completion_shape_n_and_budget():
    with TestClient(create_app(EchoBackend(), model_name="m", max_new_tokens=7)) as client:
        r = client.post("/v1/chat/completions", json={
            "model": "m", "n": 3, "temperature": 0.5,
            "messages": [{"role": "developer", "content": [{"type": "text", "text": "sys"}]},
                         {"role": "user", "content": "hello"}],
        })
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "chat.completion" and body["model"] == "m" and body["id"].startswith("chatcmpl-")
        assert [c["index"] for c in body["choices"]] == [0, 1, 2]
        assert {c["message"]["content"] for c in body["choices"]} == {"hello|t=0.5|max=7"}
        assert body["choices"][0]["finish_reason"] == "length"
        assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 9, "total_tokens": 11}
        r = client.post("/v1/chat/completions", json={"messages": user("x"), "max_tokens": 5, "max_completion_tokens": 9})
        assert r.json()["choices"][0]["message"]["content"] == "x|t=1.0|max=9"
        assert client.get("/v1/models").json()["data"][0]["id"] == "m"
        assert client.get("/health").json()["status"] == "ok"


@pytest.mark.parametrize("body, where", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
    ({"messages": user("x"), "stream": True}, "stream"),
    ({"messages": user("x"), "stop": ["\n"]}, "stop"),
    ({"messages": user("x"), "temperature": 3}, "temperature"),
    ({"messages": user("x"), "n": 0}, "n"),
    ({"messages": user("x"), "max_tokens": 100000}, "max_tokens"),
    ({"messages": [*user("x"), {"role": "assistant", "content": "y"}]}, "assistant"),
    ({"messages": user("x"), "seed": 2**70}, "seed"),  # was a 500 from torch.manual_seed
])
def test_bad_requests_get_400_with_a_clear_message(body, where):
    with TestClient(create_app(EchoBackend(), max_tokens_limit=4096)) as client:
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 400
        assert where in r.json()["error"]["message"]
        r = client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]


def test_an_unknown_model_name_is_404_model_not_found():
    with TestClient(create_app(EchoBackend(), model_name="smollm2")) as client:
        r = client.post("/v1/chat/completions", json={"model": "gpt-9-nonexistent", "messages": user("x")})
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "model_not_found" and "gpt-9-nonexistent" in r.json()["error"]["message"]
        assert client.post("/v1/chat/completions", json={"model": "smollm2", "messages": user("x")}).status_code == 200


def test_request_bodies_are_bounded():
    with TestClient(create_app(EchoBackend(), max_body_bytes=1000)) as client:
        r = client.post("/v1/chat/completions", json={"messages": user("x" * 2000)})
        assert r.status_code == 413 and "1000 bytes" in r.json()["error"]["message"]
        r = client.post("/v1/chat/completions", content=iter([b'{"messages": []}']),
                        headers={"content-type": "application/json"})  # chunked: no Content-Length
        assert r.status_code == 411
        assert client.post("/v1/chat/completions", json={"messages": user("x")}).status_code == 200


def test_the_key_is_compared_in_constant_time(monkeypatch):
    import hmac

    seen = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: seen.append((a, b)) or real(a, b))
    with TestClient(create_app(EchoBackend(), api_key="k")) as client:
        assert client.post("/v1/chat/completions", json={"messages": user("x")},
                           headers={"Authorization": "Bearer k"}).status_code == 200
    assert seen == [(b"Bearer k", b"Bearer k")]


def test_a_prompt_longer_than_the_context_is_400_naming_both_lengths(tiny_llama_path):
    backend = make_backend(BackendConfig(kind="hf", model=tiny_llama_path, progress=False))
    assert backend.context_length == 512  # the tiny model's max_position_embeddings
    with TestClient(create_app(backend, model_name="tiny")) as client:
        long = user("word " * 600)
        n = backend.count_tokens(long)
        r = client.post("/v1/chat/completions", json={"messages": long, "max_tokens": 4})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == "messages" and f"the prompt is {n} tokens" in err["message"] and "512" in err["message"]
        mid = user("word " * 400)
        r = client.post("/v1/chat/completions", json={"messages": mid, "max_tokens": 200})
        assert r.status_code == 400 and "max_tokens asks for 200 more" in r.json()["error"]["message"]
        r = client.post("/v1/chat/completions", json={"messages": mid, "max_tokens": 4, "temperature": 0})
        assert r.status_code == 200


def test_concurrent_requests_are_micro_batched_and_grouped_by_params():
    backend = EchoBackend(delay_s=0.05)
    app = create_app(backend, batch_size=16, max_wait_ms=200)

    async def go():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                reqs = [client.post("/v1/chat/completions", json={"messages": user(f"q{i}"), "temperature": 0.5 if i < 10 else 0.0})
                        for i in range(12)]
                return await asyncio.gather(*reqs)

    responses = asyncio.run(go())
    texts = [r.json()["choices"][0]["message"]["content"] for r in responses]
    assert texts == [f"q{i}|t={0.5 if i < 10 else 0.0}|max=256" for i in range(12)]
    assert sorted(backend.calls) == [2, 10]  # one round, two parameter groups


def test_full_queue_answers_429():
    app = create_app(EchoBackend(), max_queue=2)
    with TestClient(app) as client:
        r = client.post("/v1/chat/completions", json={"messages": user("x"), "n": 3})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"


def test_api_key_is_required_when_configured():
    with TestClient(create_app(EchoBackend(), api_key="s3cret")) as client:
        assert client.post("/v1/chat/completions", json={"messages": user("x")}).status_code == 401
        ok = client.post("/v1/chat/completions", json={"messages": user("x")}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert client.get("/health").status_code == 200  # liveness stays open
        for page in ("/docs", "/redoc", "/openapi.json"):  # used to answer without the key (and load CDN scripts)
            assert client.get(page).status_code == 404, page
    with TestClient(create_app(EchoBackend())) as client:  # no key (loopback): the docs stay
        assert client.get("/openapi.json").status_code == 200


class FailingBackend:
    name = "failing"

    def __init__(self, exc: Exception):
        self.exc = exc

    def chat(self, conversations, params):
        raise self.exc


@pytest.mark.parametrize("exc, status", [(RetainError("template: bad roles"), 400), (RuntimeError("CUDA out of memory"), 500)])
def test_backend_errors_become_json_errors_and_the_loop_survives(exc, status):
    with TestClient(create_app(FailingBackend(exc))) as client:
        for _ in range(2):  # the batching loop keeps serving after a failure
            r = client.post("/v1/chat/completions", json={"messages": user("x")})
            assert r.status_code == status and str(exc) in r.json()["error"]["message"]


# -- a real `retain serve` process on loopback --------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served_tiny(tiny_llama_path):
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "retain", "serve", "--model", tiny_llama_path, "--port", str(port),
         "--backend.batch_size", "8", "--max_wait_ms", "150", "--served_model_name", "tiny"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"retain serve exited early:\n{proc.stdout.read()}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                pytest.fail("retain serve did not come up within 90 s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.mark.slow
def test_official_openai_client_against_retain_serve(served_tiny):
    client = openai.OpenAI(base_url=f"{served_tiny}/v1", api_key="unused")
    assert [m.id for m in client.models.list().data] == ["tiny"]
    r = client.chat.completions.create(model="tiny", messages=user("Hello there"), max_tokens=5, temperature=0.8, n=2, seed=1)
    assert len(r.choices) == 2 and all(c.finish_reason == "length" for c in r.choices)
    assert r.usage.completion_tokens == 10 and r.usage.prompt_tokens > 5
    with pytest.raises(openai.BadRequestError, match="stream"):
        client.chat.completions.create(model="tiny", messages=user("x"), stream=True)


@pytest.mark.slow
def test_served_process_refuses_a_long_prompt_and_an_unknown_model(served_tiny):
    r = httpx.post(f"{served_tiny}/v1/chat/completions", json={"model": "tiny", "messages": user("word " * 600)}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    assert "context window is 512 tokens" in r.json()["error"]["message"]
    client = openai.OpenAI(base_url=f"{served_tiny}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError, match="gpt-9-nonexistent") as e:
        client.chat.completions.create(model="gpt-9-nonexistent", messages=user("x"), max_tokens=2)
    assert e.value.code == "model_not_found"


def test_public_host_warning_goes_to_stderr(monkeypatch, capsys):
    import uvicorn

    from retain.generation.backends import config as backend_config
    from retain.generation.serve import ServeConfig, run_serve

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)
    monkeypatch.setattr(backend_config, "make_backend", lambda cfg: EchoBackend())
    assert run_serve(ServeConfig(host="0.0.0.0", port=free_port())) == 0
    out, err = capsys.readouterr()
    assert "warning: serving on 0.0.0.0 without an API key" in err and "warning" not in out


@pytest.mark.slow
def test_openai_backend_through_retain_serve_matches_in_process_hf(served_tiny, tiny_llama_path):
    convs = [user(f"Question number {i}: " + "why? " * i) for i in range(12)]
    params = SamplingParams(max_new_tokens=5, temperature=0.0)
    remote = make_backend(BackendConfig(kind="openai", model="tiny", base_url=f"{served_tiny}/v1",
                                        max_concurrency=12, progress=False))
    before = httpx.get(f"{served_tiny}/health").json()["batches"]
    got = remote.chat(convs, params)
    after = httpx.get(f"{served_tiny}/health").json()["batches"]
    local = make_backend(BackendConfig(kind="hf", model=tiny_llama_path, batch_size=12, progress=False))
    want = local.chat(convs, params)
    assert [c.text for c in got] == [c.text for c in want]  # same answers, in input order
    assert [c.prompt_tokens for c in got] == [c.prompt_tokens for c in want]
    assert after - before < len(convs)  # concurrent requests shared generate() calls


@pytest.mark.slow
def test_serve_smollm2_answers_a_real_question(smollm2_path):
    backend = make_backend(BackendConfig(kind="hf", model=smollm2_path, progress=False))
    with TestClient(create_app(backend, model_name="smollm2")) as client:
        r = client.post("/v1/chat/completions", json={
            "messages": user("What is the capital of France?"), "temperature": 0, "max_tokens": 24})
        choice = r.json()["choices"][0]
        assert "Paris" in choice["message"]["content"] and choice["finish_reason"] == "stop"


def test_serve_reuses_the_prefix_cache_across_requests(tiny_llama_path):
    """Children of one parent arrive as separate requests: the second one prefills only its own turn."""
    backend = make_backend(BackendConfig(kind="hf", model=tiny_llama_path, progress=False))
    plain = make_backend(BackendConfig(kind="hf", model=tiny_llama_path, progress=False, prefix_sharing=False))
    dialogue = [{"role": "user", "content": "Tell me about volcanoes."},
                {"role": "assistant", "content": "Volcanoes are openings in the crust where magma erupts. " * 6}]
    questions = ["Why do they erupt?", "Where are most of them found on Earth today?", "Name one."]
    with TestClient(create_app(backend, model_name="tiny", max_wait_ms=1)) as client:
        texts, reused = [], []
        for q in questions:
            r = client.post("/v1/chat/completions", json={
                "messages": dialogue + user(q), "temperature": 0, "max_tokens": 6})
            texts.append(r.json()["choices"][0]["message"]["content"])
            reused.append(client.get("/health").json()["prefix_cache"]["reused_tokens"])
    shared_len = len(backend.encode(dialogue + user(""))) - 8  # the dialogue, less the empty last turn's tokens
    assert reused[0] == 0 and reused[1] >= shared_len and reused[2] - reused[1] >= shared_len
    want = plain.chat([dialogue + user(q) for q in questions], SamplingParams(max_new_tokens=6, temperature=0.0))
    assert texts == [c.text for c in want]


def test_serve_config_composes_the_backend_and_checks_itself(capsys):
    """ServeConfig holds a BackendConfig (no repeated fields); its checks run when it is built, and the
    old flat flags (--batch_size, --dtype, ...) still work with one notice each."""
    from retain.generation.serve import ServeConfig
    from retain.options import parse

    with pytest.raises(RetainError, match=r"^backend.prefix_cache_tokens=-1: must be >= 0$"):
        ServeConfig(backend=BackendConfig(prefix_cache_tokens=-1))
    with pytest.raises(RetainError, match=r"^--port 0: must be in 1..65535$"):
        ServeConfig(port=0)
    with pytest.raises(RetainError, match="--backend.kind openai"):
        ServeConfig(backend=BackendConfig(kind="openai"))
    cfg = parse(ServeConfig, ["--batch_size", "8", "--device", "cpu", "--port", "9"])
    assert (cfg.backend.batch_size, cfg.backend.device, cfg.port) == (8, "cpu", 9)
    assert capsys.readouterr().err.splitlines() == [
        "warning: --batch_size is deprecated; write --backend.batch_size (same meaning)",
        "warning: --device is deprecated; write --backend.device (same meaning)"]


# -- clients that give up, and concurrent shared-prefix requests on loopback (issue 22's hang) ----------

class GatedEcho(EchoBackend):
    """EchoBackend whose first call blocks until ``release`` is set: the model thread is busy while more
    requests queue behind it. ``seen`` lists every conversation's last turn that reached the model."""

    def __init__(self):
        super().__init__()
        self.release, self.seen = threading.Event(), []

    def chat(self, conversations, params):
        first = not self.calls
        self.seen.extend(c[-1]["content"] for c in conversations)
        if first:
            self.release.wait(30)
        return super().chat(conversations, params)


def wait_for(condition, what: str, limit_s: float = 15.0) -> None:
    deadline = time.time() + limit_s
    while not condition():
        if time.time() > deadline:
            pytest.fail(f"waited {limit_s} s for {what}")
        time.sleep(0.05)


def test_requests_whose_client_gave_up_are_not_generated(caplog):
    """The client's timeout-and-retry used to leave the abandoned copy queued: it was generated anyway, so
    a server slower than the client's timeout got more work with every retry and never caught up."""
    backend = GatedEcho()
    app = create_app(backend, model_name="echo", batch_size=8, max_wait_ms=0)
    post = lambda text, timeout: httpx.post(url + "/chat/completions", json={"messages": user(text)}, timeout=timeout)
    gone = lambda: sum(" 499 " in r.getMessage() for r in caplog.records)
    with serve_in_thread(app) as url, caplog.at_level("INFO", logger="retain"), ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, "first", 30)
        wait_for(lambda: backend.seen == ["first"], "the first request to reach the model")
        for i in range(3):
            with pytest.raises(httpx.ReadTimeout):
                post(f"abandoned {i}", 0.3)
        wait_for(lambda: gone() == 3, "the server to notice the 3 closed requests")
        backend.release.set()
        assert first.result().status_code == 200
        assert post("last", 30).status_code == 200
    assert backend.seen == ["first", "last"]
    lines = [r.getMessage() for r in caplog.records if r.name == "retain.generation.serve"]
    assert any(line.startswith("POST /v1/chat/completions 200 ") and " tokens " in line and line.endswith(" ms")
               for line in lines), lines


def test_concurrent_shared_prefix_requests_all_answer_and_match_in_process(tiny_llama_path):
    """Stress, bounded: rounds of 12 concurrent requests (4 parents x 3 children, so prefixes are shared
    within and across requests and the LRU evicts), plus 2 clients per round that give up at once; every
    kept answer equals the in-process unshared backend's, and the server still answers afterwards."""
    served = make_backend(BackendConfig(kind="hf", model=tiny_llama_path, batch_size=4, prefix_cache_tokens=600,
                                        progress=False))
    plain = make_backend(BackendConfig(kind="hf", model=tiny_llama_path, progress=False, prefix_sharing=False))
    params = SamplingParams(max_new_tokens=4, temperature=0.0)

    def conversation(r: int, k: int) -> list[dict[str, str]]:
        parent = [{"role": "user", "content": f"Round {r}: tell me about topic {k // 3}."},
                  {"role": "assistant", "content": f"Topic {k // 3} is wide. " * (4 + 3 * (k // 3))}]
        return parent + user("Why? " * (1 + k % 3))

    app = create_app(served, model_name="tiny", batch_size=4, max_wait_ms=5)
    with serve_in_thread(app) as url, ThreadPoolExecutor(14) as pool:
        def ask(conv, timeout):
            try:
                r = httpx.post(url + "/chat/completions", json={"messages": conv, "temperature": 0, "max_tokens": 4},
                               timeout=timeout)
            except httpx.TimeoutException:
                return None
            return r.json()["choices"][0]["message"]["content"]

        for r in range(4):
            convs = [conversation(r, k) for k in range(12)]
            quitters = [pool.submit(ask, conversation(r + 100, k), 0.01) for k in (0, 5)]
            got = list(pool.map(lambda c: ask(c, 60), convs))
            assert got == [c.text for c in plain.chat(convs, params)], f"round {r}"
            [q.result() for q in quitters]
        assert ask(user("still there?"), 60) is not None
        health = httpx.get(url.removesuffix("/v1") + "/health").json()
    assert health["prefix_cache"]["hits"] > 0 and health["prefix_cache"]["tokens"] <= 600
