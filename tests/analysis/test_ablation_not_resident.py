"""Re-route ablation on models whose weights are not resident between forwards.

A layer-streamed model (``stream_moe_model``) keeps every decoder layer on the ``meta`` device
between forwards, and accelerate's disk offload does the same for the layers it writes out. The
selection bias (DeepSeek-V3's ``e_score_correction_bias`` and every family that selects on
σ(z) + b) must still be −∞ for the ablated expert *in the tensor the forward reads*, not in the
placeholder the view holds: σ(−∞) = 0 plus a large bias would otherwise still pick the expert.

Each checkpoint here has a *planted* bias of +4 on the ablated expert (far above any σ + b of
the others, so the intact model chooses it for every token); the loss change must equal the
in-memory model's and the oracle's (transformers' own model with its router replaced by a copy of
its routing math whose selection score for the expert is −∞, ``test_ablation._deepseek_v3_router``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tiny_checkpoints
import torch
from test_ablation import _deepseek_v3_router, _indices, _nll, _patched

from moescope.analysis.ablation import AblationConfig, ablate
from moescope.analysis.interventions import reroute
from moescope.models import BY_MODEL_TYPE, BY_NAME, FAMILIES, RoutingRecorder
from moescope.models.adapters import find_moe_layers
from moescope.models.loading import load_moe_model
from moescope.models.streaming import stream_moe_model

PLANTED = 4.0  # σ(z) + b of any other expert is below 1 + max|b| ≈ 2.5 for the tiny models' N(0, 0.5²) biases


def planted_checkpoint(path: Path, family: str, *, layers: int | None = None, expert: int = 5,
                       seed: int = 0) -> Path:
    """``family``'s tiny model (``tiny_checkpoints.build``'s weights), with ``layers`` decoder layers when
    given, the selection bias of ``expert`` set to :data:`PLANTED` in every MoE layer that has one (DeepSeek-V4's
    hash-routed layers do not), saved to ``path``."""
    model = tiny_checkpoints.BUILDERS[family]()
    if layers is not None:
        model.config.num_hidden_layers = layers
        model = type(model)(model.config)
    generator = torch.Generator().manual_seed(seed)
    tiny_checkpoints._randomize(model, generator)
    hook = getattr(tiny_checkpoints.MODULES[family], "randomize", None)
    if hook is not None:
        hook(model, generator)
    model = model.float().eval()
    with torch.no_grad():
        for view in find_moe_layers(model):
            if view.selection_bias is not None:
                view.selection_bias[expert] = PLANTED  # a view of the live buffer: the model's bias changes
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    return path


def _vocab(model) -> int:
    """Rows of the output embedding (Inkling-2's differ from ``config.vocab_size``)."""
    return model.get_output_embeddings().weight.shape[0]


def _ids(vocab: int, windows: int = 4, tokens: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (windows, tokens), generator=torch.Generator().manual_seed(seed))


def _oracle_delta(path: Path, ids: torch.Tensor, layer: int, expert: int) -> tuple[np.ndarray, np.ndarray]:
    """(W,) loss change of transformers' own model with MoE layer ``layer``'s router copied and expert
    ``expert``'s selection score −∞, and (W,) that of masking only the logit (σ → 0, bias kept)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    router = find_moe_layers(model)[layer].module.gate
    with torch.no_grad(), _indices(router) as chosen:
        intact = _nll(model(input_ids=ids).logits, ids)
    assert (torch.cat(chosen) == expert).any(dim=1).all(), "the planted bias picks the expert for every token"
    out = []
    for logit_only in (False, True):
        with torch.no_grad(), _patched(router, _deepseek_v3_router(router, expert, logit_only=logit_only)):
            out.append((_nll(model(input_ids=ids).logits, ids) - intact).numpy())
    return out[0], out[1]


REROUTE = AblationConfig(modes=("reroute",), exact="all", batch_size=2, draws=100)


@pytest.mark.parametrize("family", ["deepseek_v3", "glm4_moe"])
def test_streamed_reroute_removes_an_expert_its_bias_favours(family, tmp_path):
    expert = 5
    path = planted_checkpoint(tmp_path / family, family, layers=3, expert=expert)
    model, _, views = load_moe_model(path)
    assert len(views) == 2
    ids = _ids(_vocab(model))
    cfg = replace(REROUTE, experts=(expert,))
    in_memory = ablate(model, views, {"d": ids}, cfg)
    streamed_model, _, streamed_views = stream_moe_model(path)
    streamed = ablate(streamed_model, streamed_views, {"d": ids}, cfg)
    assert streamed.order == "layer"
    streamed_cells = ablate(streamed_model, streamed_views, {"d": ids}, replace(cfg, order="cell"))
    np.testing.assert_allclose(streamed.base["d"], in_memory.base["d"], atol=1e-6, rtol=0)
    for li in range(len(views)):
        expected, logit_only = _oracle_delta(path, ids, li, expert)
        assert np.abs(expected - logit_only).max() > 1e-3, "the planted bias must matter"
        np.testing.assert_allclose(in_memory.delta["reroute"]["d"][li, 0], expected, atol=1e-5, rtol=0)
        np.testing.assert_allclose(streamed.delta["reroute"]["d"][li, 0], expected, atol=1e-5, rtol=0,
                                   err_msg=f"{family} MoE layer {li}: streamed re-route")
        np.testing.assert_allclose(streamed_cells.delta["reroute"]["d"][li, 0], expected, atol=1e-5, rtol=0,
                                   err_msg=f"{family} MoE layer {li}: streamed re-route, cell by cell")


def _has_selection_bias(tiny: str) -> bool:
    family = BY_NAME.get(tiny) or BY_MODEL_TYPE[tiny]
    return family.layout is not None and family.layout.selection_bias is not None


#: Every tiny checkpoint whose family selects with a bias (derived from the registry, not listed by hand).
BIASED = sorted(n for n in tiny_checkpoints.BUILDERS if _has_selection_bias(n))
#: Families whose forward carries state between decoder layers besides their outputs (Inkling-2's block
#: states; Family.replayable): ``order="auto"`` measures them cell by cell.
CARRIES_STATE = {f.name for f in FAMILIES if not f.replayable}


def _chosen(model, views, ids) -> dict[int, torch.Tensor]:
    """MoE layer -> (tokens, k) experts the block used on ``ids``."""
    with RoutingRecorder(model, views) as rec, torch.no_grad():
        rec.set_batch(ids, torch.ones_like(ids))
        model(input_ids=ids)
        return {r.layer: r.indices for r in rec.pop()}


@pytest.mark.slow
@pytest.mark.parametrize("family", BIASED)
def test_every_biased_family_reroutes_alike_streamed_and_in_memory(family, tmp_path):
    """The planted expert is chosen for every token intact, never under re-route, streamed or not, and the
    streamed loss change equals the in-memory one."""
    assert len(BIASED) >= 10
    expert = 5
    path = planted_checkpoint(tmp_path / family, family, expert=expert)
    model, _, views = load_moe_model(path)
    streamed, _, streamed_views = stream_moe_model(path)
    biased = tuple(v.index for v in views if v.selection_bias is not None)
    assert biased and all(streamed_views[i].selection_bias.is_meta for i in biased)
    ids = _ids(_vocab(model), windows=2, tokens=8)
    cfg = replace(REROUTE, layers=biased, experts=(expert,))
    for m, vs, how in ((model, views, "in memory"), (streamed, streamed_views, "streamed")):
        for view in (vs[i] for i in biased):
            used = _chosen(m, vs, ids)[view.index]
            assert (used == expert).any(dim=1).all(), f"{family} ({how}) MoE layer {view.index}: bias not planted"
            with reroute(view, expert):
                used = _chosen(m, vs, ids)[view.index]
            assert not (used == expert).any(), f"{family} ({how}) MoE layer {view.index}: the expert still ran"
    expected = ablate(model, views, {"d": ids}, cfg).delta["reroute"]["d"]
    assert np.abs(expected).max() > 1e-4
    for order in ("cell", "auto"):  # cell by cell from the residual cache, and layer-major where it replays
        got = ablate(streamed, streamed_views, {"d": ids}, replace(cfg, order=order))
        assert got.order == "cell" if order == "cell" else family in CARRIES_STATE or got.order == "layer"
        np.testing.assert_allclose(got.delta["reroute"]["d"], expected, atol=1e-5, rtol=0,
                                   err_msg=f"{family}, {got.order} order")


@pytest.mark.parametrize("family", ["deepseek_v3", "afmoe"])
def test_disk_offloaded_reroute_equals_in_memory(family, tmp_path):
    """accelerate's disk offload: DeepSeek-V3's bias is a buffer (kept on the execution device), AFMoE's a
    parameter (written to disk and read back inside its owner's forward)."""
    expert = 5
    path = planted_checkpoint(tmp_path / family, family, expert=expert)
    model, _, views = load_moe_model(path)
    budget = sum(f.stat().st_size for f in path.glob("*.safetensors")) // 3
    offloaded, _, offloaded_views = load_moe_model(path, device_map="auto", max_memory={"cpu": budget},
                                                   offload_folder=tmp_path / "offload")
    assert any(p.is_meta for v in offloaded_views for p in v.module.parameters()), "nothing was offloaded"
    # the buffer stays on the execution device; the parameter is a meta placeholder between forwards
    assert all(v.selection_bias.is_meta == (family == "afmoe") for v in offloaded_views)
    ids = _ids(_vocab(model), windows=2, tokens=8)
    cfg = replace(REROUTE, experts=(expert,))
    expected = ablate(model, views, {"d": ids}, cfg).delta["reroute"]["d"]
    got = ablate(offloaded, offloaded_views, {"d": ids}, cfg).delta["reroute"]["d"]
    assert np.abs(expected).max() > 1e-4
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
