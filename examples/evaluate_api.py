# examples/evaluate_api.py: `retain eval` from Python (after examples/measure.sh wrote runs/lora/model).
from retain.evaluation.compare import compare
from retain.evaluation.config import EvalSuite
from retain.evaluation.suite import BaseReference, evaluate
from retain.models import load_model

suite = EvalSuite.profile("tiny", probes={"arc_easy": 12}, domain=None)  # "default": real item counts
base, tok = load_model("smollm2")
ref = BaseReference.build(base, tok, suite)  # once per base: the items it knows, the drift reference
tuned, tuned_tok = load_model("runs/lora/model")  # a folder retain train wrote (any method) or a model folder
metrics = evaluate(tuned, tuned_tok, suite, ref)  # retention, behaviour_retention, kl_drift, probes, ...
vs_base = compare(metrics, ref.base_metrics, ref.known, ref.mc_probes, b_is_base=True)
print("kept knowledge", metrics["retention"], "vs base", vs_base["retention"])  # diff, lo, hi: paired 95 %
