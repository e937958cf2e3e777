"""``retain demo``: the end-to-end experiment, two scenarios on shared stages.

- :mod:`retain.demo.common`: options (:class:`DemoConfig`), arms, the stages both scenarios run;
- :mod:`retain.demo.text`: domain SFT of the base LLM (``--scenario text``, the default);
- :mod:`retain.demo.mllm`: a miniature LLaVA, visual instruction tuning (``--scenario mllm``).

Neither scenario imports the other; this package only dispatches.
"""

from __future__ import annotations

from retain.demo.common import DemoConfig

__all__ = ["DemoConfig", "run_demo"]


def run_demo(cfg: DemoConfig) -> int:
    """CLI entry (``retain demo``): the scenario ``cfg.scenario`` names."""
    if cfg.scenario == "mllm":
        from retain.demo.mllm import run_mllm_demo

        return run_mllm_demo(cfg)
    from retain.demo.text import run_text_demo

    return run_text_demo(cfg)
