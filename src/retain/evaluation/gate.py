"""The forgetting gate: pass or fail a fine-tune on the bounds of its paired 95 % intervals against the base.

A gate is a YAML mapping (a file, or inline YAML on the command line), read with ``yaml.safe_load``::

    mode: strict                          # or lenient (``--gate_mode`` overrides it)
    knowledge_retention: {min_diff: -3}   # pts: retention may drop at most 3 points
    behaviour_retention: {min_diff: -5}
    drift: {max: 0.05}                    # nats/token of KL(base ‖ tuned)
    domain: {min_gain: 0}                 # pts (nats/token for a free-form domain file)
    lm_eval:my_task: {min_diff: -2}       # pts of the task's primary per-item metric

- Rule names are the gate keys of :data:`retain.evaluation.verdict.AXES` plus ``lm_eval:<task>``; a rule
  has one bound: ``min_diff`` (alias ``min_gain``), or ``max`` (alias ``max_diff``), in the axis' shown
  unit (points for % axes). An unknown rule or key is a user error (exit 2) naming it.
- **strict** (default): the loss must be *shown* to be small. ``min_diff`` passes when the interval's lower
  bound is >= the threshold; ``max`` when its upper bound is <= the threshold. Few items give wide intervals,
  so a strict gate on a small probe set fails until it has enough items to show the loss is small.
- **lenient**: the loss must not be *shown* to be large. ``min_diff`` passes when the upper bound is >= the
  threshold; ``max`` when the lower bound is <= it. A straddling interval passes.
- A rule whose axis the run did not measure fails (it cannot be shown either way); what can be checked
  before any model loads (no domain, no drift prompts, an lm-eval task not run) is a user error instead.
- Every tuned model is gated; the gate passes when every rule passes for every model. ``retain eval`` prints
  one line per rule and model, writes ``gate.json`` (atomically) and exits 1 on a failure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from retain.errors import RetainError
from retain.evaluation.stats import Interval, fmt_interval
from retain.evaluation.verdict import AXES, LM_EVAL_PREFIX, row_axes

GATE_FILE = "gate.json"
Mode = Literal["strict", "lenient"]
MIN_KEYS = ("min_diff", "min_gain")
MAX_KEYS = ("max", "max_diff")
RULE_NAMES = tuple(a.gate_key for a in AXES)


@dataclass(frozen=True)
class Rule:
    name: str
    """Axis gate key (``knowledge_retention``, ``drift``, ...) or ``lm_eval:<task>``."""
    bound: Literal["min", "max"]
    """``min``: the difference must reach at least ``threshold``; ``max``: at most."""
    threshold: float
    """In the axis' shown unit (points for % axes, nats/token for drift)."""


@dataclass
class Gate:
    rules: list[Rule] = field(default_factory=list)
    mode: Mode = "strict"
    source: str = ""
    """Where the rules came from (file path or the inline text)."""


def parse_gate(data: object, source: str = "gate", mode: Mode | None = None) -> Gate:
    """A :class:`Gate` from a mapping (as read from YAML); ``mode`` overrides the mapping's own."""
    if not isinstance(data, dict) or not data:
        raise RetainError(f"{source}: a gate is a mapping of rules, e.g. 'knowledge_retention: {{min_diff: -3}}'")
    data = dict(data)
    file_mode = data.pop("mode", "strict")
    mode = mode or file_mode
    if mode not in ("strict", "lenient"):
        raise RetainError(f"{source}: mode {mode!r}; use strict or lenient")
    rules = []
    for name, spec in data.items():
        name = str(name)
        if name not in RULE_NAMES and not (name.startswith(LM_EVAL_PREFIX) and len(name) > len(LM_EVAL_PREFIX)):
            raise RetainError(f"{source}: unknown rule '{name}'; use {', '.join(RULE_NAMES)} or lm_eval:<task> "
                              "(and mode)")
        if not isinstance(spec, dict):
            raise RetainError(f"{source}: {name}: give a mapping such as {{min_diff: -3}} or {{max: 0.05}}")
        unknown = [k for k in spec if k not in MIN_KEYS + MAX_KEYS]
        if unknown or len(spec) != 1:
            raise RetainError(f"{source}: {name}: {'unknown key ' + repr(unknown[0]) if unknown else 'give one bound'}"
                              f"; use one of {', '.join(MIN_KEYS + MAX_KEYS)}")
        (key, value), = spec.items()
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RetainError(f"{source}: {name}.{key}: {value!r} is not a number")
        rules.append(Rule(name, "min" if key in MIN_KEYS else "max", float(value)))
    return Gate(rules, mode, source)


def load_gate(spec: str, mode: Mode | None = None) -> Gate:
    """A gate from a YAML file, or from inline YAML (``'{drift: {max: 0.05}}'``)."""
    import yaml

    from retain.utils.io import read_text

    p = Path(spec).expanduser()
    if p.exists():
        text, source = read_text(p, "gate file"), str(p)
    elif spec.lstrip().startswith("{"):
        text, source = spec, "--gate"
    else:
        raise RetainError(f"--gate {spec}: no such file; give a YAML file of rules or inline YAML like "
                          "'{knowledge_retention: {min_diff: -3}}'")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise RetainError(f"{source}{':' + str(mark.line + 1) if mark else ''}: invalid YAML; fix the gate") from None
    return parse_gate(data, source, mode)


def check_interval(rule: Rule, iv: Interval, scale: float, mode: Mode) -> tuple[bool, float]:
    """(passed, the bound that was compared, in shown units) of one rule on one interval.

    strict: min -> lo >= threshold, max -> hi <= threshold; lenient: min -> hi >= threshold, max -> lo <= threshold."""
    lo, hi = iv.lo * scale, iv.hi * scale
    if rule.bound == "min":
        value = lo if mode == "strict" else hi
        return value >= rule.threshold, value
    value = hi if mode == "strict" else lo
    return value <= rule.threshold, value


def evaluate_gate(gate: Gate, rows: list[dict]) -> list[dict]:
    """One result per (tuned row, rule): ``{"model", "rule", "passed", "bound", "value", "threshold", "unit",
    "diff", "lo", "hi", "n", "mode", "line"}`` (value/diff/lo/hi in shown units)."""
    results = []
    for r in rows:
        if r.get("model") == "base" or "vs_base" not in r:
            continue
        axes = {a.gate_key: (a, e) for a, e in row_axes(r)}
        for rule in gate.rules:
            op = ">=" if rule.bound == "min" else "<="
            side = ("lower" if rule.bound == "min" else "upper") if gate.mode == "strict" else \
                   ("upper" if rule.bound == "min" else "lower")
            res = {"model": r.get("model"), "rule": rule.name, "bound": f"{side} bound {op}",
                   "threshold": rule.threshold, "mode": gate.mode}
            if rule.name not in axes or math.isnan(Interval.from_json(axes[rule.name][1]).diff):
                res.update(passed=False, line=f"FAIL {r.get('model')} {rule.name}: not measured in this run")
                results.append(res)
                continue
            axis, entry = axes[rule.name]
            iv = Interval.from_json(entry)
            ok, value = check_interval(rule, iv, axis.scale, gate.mode)
            d = axis.digits
            res.update(passed=ok, value=value, unit=axis.unit, diff=iv.diff * axis.scale, lo=iv.lo * axis.scale,
                       hi=iv.hi * axis.scale, n=iv.n,
                       line=f"{'pass' if ok else 'FAIL'} {r.get('model')} {rule.name}: {side} bound {value:+.{d}f} "
                            f"{axis.unit}, needs {op} {rule.threshold:+g} (difference "
                            f"{fmt_interval(iv, axis.scale, d)}, {iv.n} items, {gate.mode})")
            results.append(res)
    return results


def gate_summary(gate: Gate, results: list[dict]) -> dict:
    """What ``gate.json`` holds."""
    return {"passed": bool(results) and all(r["passed"] for r in results), "mode": gate.mode, "gate": gate.source,
            "rules": [{"name": r.name, "bound": r.bound, "threshold": r.threshold} for r in gate.rules],
            "results": results}
