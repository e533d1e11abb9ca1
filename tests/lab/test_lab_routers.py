"""The lab's routers come from the router catalogue: names, causality, construction, capacity.

Each lab router name is a catalogued router's ``lab_name`` (or Soft MoE's); these checks run
over whatever the catalogue holds, so a router added there is checked here too.
"""

import warnings
from dataclasses import replace

import pytest
import torch
from lab_fixtures import TINY_LM

from moescope.lab.model import FFN_KINDS, NON_CAUSAL_ROUTERS, ROUTERS, MoESpec, TinyLM, build_ffn
from moescope.moe import MoELayer, SoftMoELayer
from moescope.moe.routers import ROUTERS as CATALOGUE


def _cfg(router: str, **moe):
    return replace(TINY_LM, moe=replace(TINY_LM.moe, router=router, **moe))


def test_lab_names_are_the_catalogue_lab_names():
    offered = {kind.lab_name: kind for kind in (*CATALOGUE, SoftMoELayer) if kind.lab_name is not None}
    assert FFN_KINDS == offered and set(ROUTERS) == set(offered)
    assert set(NON_CAUSAL_ROUTERS) == {name for name, kind in offered.items() if not kind.causal}
    assert {"topk", "switch", "deepseek_v3", "cosine", "soft", "expert_choice"} <= set(ROUTERS)   # what runs.py uses
    with pytest.raises(ValueError, match="router must be one of"):
        MoESpec(router="gpt_oss")                                     # catalogued, but not offered by the lab


@pytest.mark.parametrize("name", ROUTERS)
def test_block_is_built_by_the_named_router_from_the_spec(name):
    spec = dict(num_experts=6, top_k=3, capacity_factor=0.75, normalize_topk=False, balance="switch",
                n_group=3 if name == "deepseek_v3" else 1, topk_group=2 if name == "deepseek_v3" else 1,
                bias_update_rate=0.02, temperature=0.3)
    cfg = _cfg(name, **spec)
    block = build_ffn(cfg)
    if FFN_KINDS[name] is SoftMoELayer:
        assert type(block) is SoftMoELayer and block.slots_per_expert == cfg.slots_per_expert
        return
    assert type(block) is MoELayer and type(block.router) is FFN_KINDS[name]
    router = block.router
    assert router.num_experts == 6 and router.hidden == cfg.d_model
    for field, value in spec.items():                                  # every field the router keeps is the spec's
        if field != "num_experts" and hasattr(router, field):
            assert getattr(router, field) == value, field
    if hasattr(router, "log_temperature"):
        assert float(router.log_temperature.detach().exp()) == pytest.approx(0.3)
    if hasattr(router, "capacity_scope"):
        assert router.capacity_scope == "sequence"                     # counted per sequence: stays causal


@pytest.mark.parametrize("name", ROUTERS)
def test_capacity_in_force_is_the_routers_default(name):
    kind = FFN_KINDS[name]
    assert MoESpec(router=name).capacity == getattr(kind, "default_capacity_factor", None)
    assert MoESpec(router=name, capacity_factor=0.5).capacity == 0.5


@pytest.mark.parametrize("name", ROUTERS)
def test_causal_flag_holds_in_the_lm(name):
    """Changing every token at >= cut leaves the logits at < cut alone exactly when the router says
    it is causal (Switch with a small capacity, so that it drops tokens: still causal)."""
    cfg = _cfg(name, capacity_factor=0.5)
    assert cfg.causal == FFN_KINDS[name].causal
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                                # NonCausalRouterWarning, on purpose
        model = TinyLM(cfg).eval()
    gen = torch.Generator().manual_seed(1)
    idx = torch.randint(3, cfg.vocab_size, (3, cfg.seq_len), generator=gen)
    changed, cut = idx.clone(), 9
    changed[:, cut:] = torch.randint(3, cfg.vocab_size, (3, cfg.seq_len - cut), generator=gen)
    with torch.no_grad():
        leak = float((model(idx).logits[:, :cut] - model(changed).logits[:, :cut]).abs().max())
    assert (leak <= 1e-6) == FFN_KINDS[name].causal, leak
