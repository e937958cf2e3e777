# examples/backend_api.py: generate through retain's backends (what retain decompress and retain serve use).
from retain.generation.backends import BackendConfig, SamplingParams, make_backend

backend = make_backend(BackendConfig(kind="hf", model="smollm2", batch_size=32))  # or kind="openai", base_url=...
conversation = [{"role": "user", "content": "What is DNA?"}]
[reply] = backend.chat([conversation], SamplingParams(max_new_tokens=32, temperature=0))  # 0: greedy
print(reply.text, reply.finish_reason, reply.completion_tokens)
