"""Claim 18: mixture-of-curvature experts (HELM-MiCE) — hierarchical tokens go to the more curved experts,
and the model beats a Euclidean MoE of equal parameters.

Reads :func:`moescope.lab.curvature_experts.run_curvature_experts`. Two conditions, both must hold:

1. held-out loss, twin − MiCE, paired over seeds (the same initial weights and batches per seed);
2. the routing-weighted mean log-curvature of tokens of hierarchical sentences minus that of flat
   sentences, a t-interval over seeds.

The experiment also holds each seed's difference against a label-shuffle null (hierarchical / flat
labels permuted over the same tokens). It is reported, not decided on: any router that depends on the
token separates the two kinds of token, so an untrained model already lands far outside that null
(an independent review found p <= 0.025 on untrained models); the seed-to-seed spread of condition 2 is
the replication that decides.
"""

from __future__ import annotations

from moescope.lab.claims._trained import fmt_interval, mean
from moescope.lab.verdict import Verdict, judge, rule_text
from moescope.stats import Evidence, assess

CLAIM = ("Mixture-of-curvature experts (HELM-MiCE): hierarchical tokens route to the more negatively curved "
         "experts, and the model beats a Euclidean MoE of equal total and active parameters")
LECTURE = "Hyperbolic LLMs (2025): 双曲空間でのLLM表現学習"
ID = 18
NEEDS = ("curvature_experts",)
FIGURES = ("curvature_experts_routing.png", "curvature_experts_loss.png")
# Loss: MiCE must beat its twin by 0.02 nats of held-out loss (about 2% in perplexity), the margin claim 15
# uses for a quality difference too small to matter at this scale.
LOSS_MARGIN = 0.02
# Routing: hierarchical tokens' experts must be at least 5% more curved than flat tokens' (0.05 in log c).
# The experts start 10× apart in curvature (2.3 in log c); a 5% shift is about 2% of that spread, the
# smallest difference in geometry worth calling a preference.
ROUTING_MARGIN = 0.05


def evidence(data: dict) -> list[Evidence]:
    """The claim's two deciding conditions from the experiment's per-seed values."""
    return [
        Evidence("held-out loss, Euclidean twin − MiCE", "paired_t", data["twin_loss"], against=data["mice_loss"],
                 reference=0.0, margin=LOSS_MARGIN, side="greater", unit="seed", extra={"unit_of_effect": "nats"}),
        Evidence("routing-weighted log-curvature, hierarchical − flat tokens", "t", data["routing_diff"],
                 reference=0.0, margin=ROUTING_MARGIN, side="greater", unit="seed",
                 extra={"unit_of_effect": "log c"}),
    ]


def label_shuffle(data: dict) -> Evidence:
    """The per-seed difference against its label-shuffle null: reported, never deciding (module docstring)."""
    return Evidence("routing-weighted log-curvature difference against the label-shuffle null", "permutation_shift",
                    data["routing_diff"], null=data["routing_null"], reference=0.0, margin=ROUTING_MARGIN,
                    side="greater", unit="seed", extra={"unit_of_effect": "log c"})


def evaluate(data: dict) -> Verdict:
    ev = evidence(data)
    j = judge(ev, unit="nats")
    loss, routing = j.assessments
    null = assess(label_shuffle(data))
    runs = data["runs"]
    p = data["runs"][0]["params"]
    s = data["settings"]
    return Verdict(
        claim_id=ID, claim=CLAIM, lecture=LECTURE, verdict=j.verdict, rule=rule_text(ev), key=j.key,
        measured=(f"over {len(runs)} seeds, MiCE's held-out loss is {mean(data['mice_loss']):.3f} against "
                  f"{mean(data['twin_loss']):.3f} for the Euclidean twin (twin − MiCE {loss.effect:+.3f} nats "
                  f"{fmt_interval(loss)}); hierarchical tokens' experts have a routing-weighted log-curvature "
                  f"{routing.effect:+.3f} above flat tokens' {fmt_interval(routing)} (against a label-shuffle null, "
                  f"reported but not deciding because any token-dependent router separates the labels: "
                  f"{fmt_interval(null)}, p = {null.p_value:.3g})."),
        baseline=("the same LM with Euclidean SwiGLU experts and a gain per expert in place of each curvature "
                  f"({p['twin']['total']:,} parameters, {p['twin']['active']:,.0f} active per token, equal to "
                  "MiCE's), the same initial weights and batches per seed; for routing, the hierarchical/flat "
                  "labels shuffled over the same tokens"),
        numbers={"mice_loss": data["mice_loss"], "twin_loss": data["twin_loss"],
                 "routing_diff": data["routing_diff"],
                 "p_values": [r["routing"]["p_value"] for r in runs],
                 "curvatures": [[lay["curvature"] for lay in r["routing"]["layers"]] for r in runs],
                 "params": p, "settings": s},
        caveat=(f"HELM-MiCE is a fully hyperbolic LLM of about 1B parameters trained on about 5B tokens (He et al. "
                f"2025; gains up to 4% on MMLU/ARC). Here: a {s['n_layer']}-layer LM of {p['mice']['total']:,} "
                f"parameters, {s['steps']} steps on a generated corpus of {s['vocab_size']} words; only the "
                "experts are hyperbolic (Euclidean hidden states enter and leave them by the exponential and "
                "logarithmic maps at the origin), and the outputs combine by the tangent-space weighted sum."),
        figures=FIGURES, evidence=j.evidence,
        construction=(f"Parameters, MiCE vs twin: {p['mice']['total']:,} vs {p['twin']['total']:,} total, "
                      f"{p['mice']['active']:,.0f} vs {p['twin']['active']:,.0f} active per token (one curvature "
                      "per expert against one gain).",),
    )


def from_lab(data: dict) -> Verdict:
    return evaluate(data["curvature_experts"])
