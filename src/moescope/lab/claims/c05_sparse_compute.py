"""Claim 5: sparse activation saves compute (e.g. 2 of 8 experts).

That top-k of E experts costs about k/E of the dense FLOPs holds by construction (it is arithmetic).
The empirical question is what the saving buys: does a top-2 MoE reach a lower validation loss than
a dense model with the same *active* parameters per token (the same compute), across seeds? The
wall time of one MoE layer against the dense FFN of equal total parameters is measured interleaved
in one process and reported, never deciding alone (it depends on the machine's load).
"""

from __future__ import annotations

import statistics
import time

import torch

from moescope.lab.claims._trained import fmt_interval, loss_gain, mean, paired
from moescope.lab.verdict import Verdict, judge, rule_text
from moescope.moe import DenseFFN, Experts, MoELayer, TopKRouter

CLAIM = "Sparse activation saves compute: k of E experts per token"
LECTURE = "計算効率: 全パラメータを使わずに推論（例：8つのExpertのうち2つだけ活性化）"
ID = 5
NEEDS = ("sparse", "training")
FIGURES = ("quality_vs_compute.png",)
# The MoE must beat the dense model of equal active parameters by 0.02 nats of validation loss
# — a difference too small to matter (about 2% in perplexity); the seed-to-seed spread (0.1-0.3 nats
# at the quick scale) is what the interval carries, not the margin.
MARGIN = 0.02


def measure(*, hidden: int = 256, intermediate: int = 512, experts: int = 8, top_k: int = 2,
            tokens: int = 2048, repeats: int = 7, seed: int = 0) -> dict:
    """One MoE layer vs the dense FFN of equal total parameters: FLOPs per token, interleaved wall times."""
    torch.manual_seed(seed)
    moe = MoELayer(router=TopKRouter(hidden, experts, top_k), experts=Experts(experts, hidden, intermediate)).eval()
    dense = DenseFFN(hidden, experts * intermediate).eval()      # equal total expert parameters
    x = torch.randn(tokens, hidden)
    per_expert = 3 * hidden * intermediate
    flops_moe = 2 * (top_k * per_expert + hidden * experts)      # experts + router, per token
    flops_dense = 2 * experts * per_expert
    t_moe, t_dense = [], []
    with torch.no_grad():
        moe(x)
        dense(x)  # warm-up
        for _ in range(repeats):  # interleaved: both see the same machine state
            for fn, acc in ((moe, t_moe), (dense, t_dense)):
                start = time.perf_counter()
                fn(x)
                acc.append(time.perf_counter() - start)
    ratios = [a / b for a, b in zip(t_moe, t_dense, strict=True)]
    return {"hidden": hidden, "intermediate": intermediate, "experts": experts, "top_k": top_k, "tokens": tokens,
            "flops_per_token_moe": flops_moe, "flops_per_token_dense": flops_dense,
            "params_moe": sum(p.numel() for p in moe.parameters()),
            "params_dense": sum(p.numel() for p in dense.parameters()),
            "time_moe_s": statistics.median(t_moe), "time_dense_s": statistics.median(t_dense),
            "time_ratio": statistics.median(ratios), "time_ratios": ratios, "threads": torch.get_num_threads()}


def evaluate(m: dict, runs: dict) -> Verdict:
    """``m``: :func:`measure`; ``runs``: the lab's runs (``top2``, ``dense-active``, ``dense-total``, seeds)."""
    flop_ratio = m["flops_per_token_moe"] / m["flops_per_token_dense"]
    pairs, gain = loss_gain(runs, "top2", "dense-active",
                            "validation loss, dense (equal active parameters) − top-2 MoE", MARGIN)
    evidence = [gain]
    j = judge(evidence)
    a = j.assessments[0]
    total = [r["val_loss"] for r, in paired(runs, "dense-total")]
    return Verdict(
        claim_id=ID, claim=CLAIM, lecture=LECTURE, verdict=j.verdict, rule=rule_text(evidence), key=j.key,
        measured=(f"over {len(pairs)} seeds, the top-2 MoE's validation loss is "
                  f"{mean(t['val_loss'] for t, _ in pairs):.3f} "
                  f"against {mean(d['val_loss'] for _, d in pairs):.3f} for the dense model with the same active "
                  f"parameters ({a.effect:+.3f} nats {fmt_interval(a)}) and {mean(total):.3f} for the dense model "
                  f"with the same total parameters."),
        timing=(f"timed interleaved ({m['threads']} threads, {m['tokens']} tokens), one MoE layer runs in "
                f"{m['time_ratio']:.2f}× the time of the dense FFN of equal total parameters."),
        baseline="dense SwiGLU models with the MoE's active (and total) parameters, same data and seed",
        numbers={"flop_ratio": flop_ratio, "val_loss_top2": [t["val_loss"] for t, _ in pairs],
                 "val_loss_dense_active": [d["val_loss"] for _, d in pairs], "val_loss_dense_total": total, **m},
        evidence=j.evidence,
        construction=(f"Top-{m['top_k']} of {m['experts']} experts costs {flop_ratio:.1%} of the FLOPs of the dense "
                      f"FFN with equal parameters ({m['params_moe']:,} vs {m['params_dense']:,}): k/E plus the "
                      "router, by arithmetic.",),
        figures=FIGURES,
    )


NEEDS_TRAINING = "the top-2 and dense runs of equal active parameters"


def from_lab(data: dict) -> Verdict:
    return evaluate(data["sparse"], data["training"]["runs"])
