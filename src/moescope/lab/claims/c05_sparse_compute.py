"""Claim 5: sparse activation saves compute (e.g. 2 of 8 experts).

Measures one MoE layer (moescope's ``MoELayer``, top-2 of 8 SwiGLU experts) against the
dense SwiGLU FFN with the same *total* parameters, on the same tokens: analytic FLOPs per
token and wall time of the forward pass (median of repeats, one process).
"""

from __future__ import annotations

import statistics
import time

import torch

from moescope.lab.verdict import KeyNumber, Verdict, decide
from moescope.moe import DenseFFN, Experts, MoELayer, TopKRouter

CLAIM = "Sparse activation saves compute: k of E experts per token"
LECTURE = "計算効率: 全パラメータを使わずに推論（例：8つのExpertのうち2つだけ活性化）"
# Analytic: top-2 of 8 must cost at most 30% of the dense layer (2/8 = 25% plus the router).
MAX_FLOP_RATIO = 0.30
# Measured: the saving must be real, at least half the dense time (dispatch overhead included).
MAX_TIME_RATIO = 0.5


def measure(*, hidden: int = 256, intermediate: int = 512, experts: int = 8, top_k: int = 2,
            tokens: int = 2048, repeats: int = 7, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    moe = MoELayer(router=TopKRouter(hidden, experts, top_k), experts=Experts(experts, hidden, intermediate)).eval()
    dense = DenseFFN(hidden, experts * intermediate).eval()      # equal total expert parameters
    x = torch.randn(tokens, hidden)
    per_expert = 3 * hidden * intermediate
    flops_moe = 2 * (top_k * per_expert + hidden * experts)      # experts + router, per token
    flops_dense = 2 * experts * per_expert

    def timed(fn) -> list[float]:
        out = []
        with torch.no_grad():
            fn()  # warm-up
            for _ in range(repeats):
                start = time.perf_counter()
                fn()
                out.append(time.perf_counter() - start)
        return out

    t_moe, t_dense = timed(lambda: moe(x)), timed(lambda: dense(x))
    ratios = [a / b for a, b in zip(t_moe, t_dense, strict=True)]
    return {"hidden": hidden, "intermediate": intermediate, "experts": experts, "top_k": top_k, "tokens": tokens,
            "flops_per_token_moe": flops_moe, "flops_per_token_dense": flops_dense,
            "params_moe": sum(p.numel() for p in moe.parameters()),
            "params_dense": sum(p.numel() for p in dense.parameters()),
            "time_moe_s": statistics.median(t_moe), "time_dense_s": statistics.median(t_dense),
            "time_ratio": statistics.median(ratios),
            "time_ratio_spread": (max(ratios) - min(ratios)) / 2, "threads": torch.get_num_threads()}


def evaluate(m: dict) -> Verdict:
    flop_ratio = m["flops_per_token_moe"] / m["flops_per_token_dense"]
    conditions = {f"active FLOPs ≤ {MAX_FLOP_RATIO:.0%} of dense": flop_ratio <= MAX_FLOP_RATIO,
                  f"measured time ≤ {MAX_TIME_RATIO:.0%} of dense": m["time_ratio"] <= MAX_TIME_RATIO}
    return Verdict(
        claim_id=5, claim=CLAIM, lecture=LECTURE, verdict=decide(conditions),
        rule="supported if all of: " + "; ".join(conditions),
        key=KeyNumber("MoE / dense forward time", m["time_ratio"], m["time_ratio_spread"]),
        measured=(f"top-{m['top_k']} of {m['experts']} experts uses {flop_ratio:.1%} of the FLOPs of the dense "
                  f"FFN with equal parameters ({m['params_moe']:,} vs {m['params_dense']:,}) and runs in "
                  f"{m['time_ratio']:.2f}× its time on {m['tokens']} tokens ({m['threads']} threads)."),
        baseline="a dense SwiGLU FFN with the same total parameters, timed in the same process",
        numbers={"conditions": conditions, "flop_ratio": flop_ratio, **m},
    )
