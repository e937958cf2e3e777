"""Backend options (torch-free, so ``--help`` stays fast) and the factory that builds a backend.

- One dataclass for both kinds: ``hf`` reads the model/dtype/device/batch fields, ``openai`` reads the
  server fields. Embedded as ``DecompressConfig.backend`` it shows up as ``--backend.kind`` etc.
- The API key is never a field: only the *name* of the environment variable that holds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from retain.generation.backends.base import Backend


@dataclass
class BackendConfig:
    kind: Literal["hf", "openai"] = "hf"
    """Where generation runs: 'hf' (transformers in this process) or 'openai' (an OpenAI-compatible server:
    `retain serve`, vLLM, SGLang, llama.cpp server, TGI)."""
    model: str = "smollm2"
    """'smollm2' (bundled), a local HF folder or a hub id for 'hf'; the server's model name for 'openai'
    ('smollm2' is sent as-is; `retain serve` answers only its served name, 404 model_not_found otherwise)."""
    base_url: str = "http://127.0.0.1:8000/v1"
    """'openai' only: the server's base URL, ending in /v1."""
    api_key_env: str = "OPENAI_API_KEY"
    """'openai' only: name of the environment variable holding the API key (a dummy key is used when it is
    unset, which local servers accept)."""
    batch_size: int = 32
    """'hf' only: conversations per generate() call."""
    prefix_sharing: bool = True
    """'hf' only: prefill each prompt prefix shared by several conversations (a parent's dialogue) once and
    copy its KV cache to the rows that share it; False = plain left-padded batches, length-sorted."""
    prefix_cache_tokens: int = 4096
    """'hf' only: prompt-prefix KV kept across calls (LRU), in tokens; 0 = none. Memory per token =
    layers * 2 * kv_heads * head_dim * dtype bytes (46 KB for SmolLM2-135M in float32)."""
    max_concurrency: int = 16
    """'openai' only: requests in flight at once."""
    timeout_s: float = 120.0
    """'openai' only: per-request timeout in seconds."""
    max_retries: int = 4
    """'openai' only: retries on 429 / 5xx / connection errors (exponential backoff with jitter)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    """'hf' only: weights dtype ('auto' = the checkpoint's)."""
    device: str = "auto"
    """'hf' only: 'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:1', 'mps'."""
    trust_remote_code: bool = False
    """'hf' only: allow a model folder's own Python code to run (only for models you trust)."""
    progress: bool = True
    """Show a progress bar per chat() call."""

    def __post_init__(self) -> None:
        from retain.errors import RetainError

        checks = [("batch_size", self.batch_size >= 1), ("max_concurrency", self.max_concurrency >= 1),
                  ("max_retries", self.max_retries >= 0), ("timeout_s", self.timeout_s > 0),
                  ("prefix_cache_tokens", self.prefix_cache_tokens >= 0)]
        for name, ok in checks:
            if not ok:
                bound = {"batch_size": ">= 1", "max_concurrency": ">= 1", "timeout_s": "> 0"}.get(name, ">= 0")
                raise RetainError(f"backend.{name}={getattr(self, name)}: must be {bound}")


def make_backend(cfg: BackendConfig) -> "Backend":
    """Build the backend ``cfg`` describes (through the registry in ``base.py``)."""
    from retain.generation.backends.base import get_backend

    return get_backend(cfg.kind, cfg=cfg)
