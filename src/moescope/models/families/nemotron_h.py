"""Nemotron-H (``NemotronHMoE``): DeepSeek-V3 routing over non-gated ReLU² experts, one mixer per layer.

Routing (``NemotronHTopkRouter``, the rule stated in :mod:`._deepseek_like`): ``s = sigmoid(x Wᵀ)``
in float32; experts chosen on ``s + e_score_correction_bias`` within the ``topk_group`` best of
``n_group`` groups; weights the unbiased ``s_i``, renormalised when ``norm_topk_prob``, times
``routed_scaling_factor``. Each expert is a *non-gated* MLP ``down · act(up · x)`` with
``act = mlp_hidden_act`` (ReLU², i.e. ``relu(z)²``); one non-gated shared MLP of width
``moe_shared_expert_intermediate_size`` is added unweighted. Every layer holds one mixer, chosen
by ``layers_block_type`` (``"moe"``, ``"mlp"``, ``"full_attention"``, ``"linear_attention"`` = Mamba-2);
only ``"moe"`` layers are MoE.

Live: the block is the layer's ``mixer``: ``block.gate`` (``weight`` (E, H),
``e_score_correction_bias`` (E,), ``num_group``, ``topk_group``, ``top_k``; returns
``(logits, weights, indices)``), stacked ``block.experts.up_proj`` (E, I, H) /
``down_proj`` (E, H, I) (no gate), ``block.shared_experts`` (``up_proj``/``down_proj``). On disk
(prefix ``backbone.layers.{i}``): ``mixer.gate.weight``, ``mixer.gate.e_score_correction_bias``,
``mixer.experts.{e}.{up,down}_proj.weight`` and ``mixer.shared_experts.{up,down}_proj.weight``.

Not in the view: the activation (ReLU², not SiLU; the views' ``gate`` is None), and, when
``moe_latent_size`` is set, the latent projections ``fc1_latent_proj`` (H -> L) before the
routed experts and ``fc2_latent_proj`` (L -> H) after them: the experts' matrices then act on
the L-dimensional latent, and reproducing the block needs those two Linear layers too.
"""

from collections.abc import Callable

from torch import Tensor

from moescope.models.family import Family
from moescope.models.layout import Layout, Separate
from moescope.models.parts import check_expert, mlp
from moescope.models.readers import read_triple
from moescope.models.view import ExpertWeights


def stacked_ungated(up: Tensor, down: Tensor, where: str = "") -> Callable[[int], ExpertWeights]:
    """Expert e of non-gated stacked weights ``up`` (E, I, D) and ``down`` (E, D, I), D = H or the latent."""
    up, down = up.detach(), down.detach()
    if up.dim() != 3 or down.dim() != 3 or up.shape[0] != down.shape[0] or up.shape[1:] != down.shape[1:][::-1]:
        raise ValueError(f"{where}: expected up_proj (E, I, D) and down_proj (E, D, I); got "
                         f"{tuple(up.shape)} and {tuple(down.shape)}")
    num_experts = up.shape[0]

    def expert(e: int) -> ExpertWeights:
        check_expert(e, num_experts)
        return ExpertWeights(up=up[e], down=down[e])

    return expert


def _adapter(block, parent, name):
    gate = block.gate
    return dict(family="nemotron_h", num_experts=gate.weight.shape[0], top_k=int(gate.top_k), scoring="sigmoid",
                router_weight=gate.weight.detach(), selection_bias=gate.e_score_correction_bias.detach(),
                n_group=int(gate.num_group), topk_group=int(gate.topk_group),
                expert=stacked_ungated(block.experts.up_proj, block.experts.down_proj, where=name),
                shared=(mlp(block.shared_experts, gate=None),))


FAMILY = Family(
    name="nemotron_h", title="Nemotron-H", model_types=("nemotron_h",), blocks=("NemotronHMoE",),
    adapter=_adapter, hook="gate", reader=read_triple,
    layout=Layout((r"backbone\.layers\.(\d+)",), "mixer.gate.weight",
                  Separate(up="mixer.experts.{e}.up_proj.weight", down="mixer.experts.{e}.down_proj.weight"),
                  shared=(Separate(up="mixer.shared_experts.up_proj.weight",
                                   down="mixer.shared_experts.down_proj.weight"),),
                  selection_bias="mixer.gate.e_score_correction_bias", scoring="sigmoid"),
)
