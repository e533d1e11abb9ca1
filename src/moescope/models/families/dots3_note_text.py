"""dots3-note (``Dots3NoteTextMoE``): DeepSeek-V3 routing, a shared expert of its own width.

Routing: as DeepSeek-V3 (see :mod:`._deepseek_like`): ``s = sigmoid(x Wᵀ)`` in float32, experts
chosen on ``s + e_score_correction_bias`` within the ``topk_group`` best of ``n_group`` groups,
combine weights the unbiased ``s`` (renormalised when ``norm_topk_prob``) ×
``routed_scaling_factor``. One shared MLP of width
``n_shared_experts · shared_experts_intermediate_size`` (not ``moe_intermediate_size``) is added
unweighted. Layers whose ``mlp_layer_types`` entry is ``"dense"`` are a dense ``Dots3NoteTextMLP``.

Model types: ``dots3_note_text`` (the language model alone; ``AutoModelForCausalLM`` gives
``Dots3NoteForCausalLM``). The multimodal ``dots3_note`` (vision tower with its own MoE) is not
claimed here.

Live block and on-disk layout: DeepSeek-V3's, described once in :mod:`._deepseek_like`.

The view carries everything the block computes (the scaling factor is inside the recorded weights).
"""

from moescope.models.families._deepseek_like import LAYOUT, adapter
from moescope.models.family import Family
from moescope.models.readers import read_triple

FAMILY = Family(
    name="dots3_note_text", title="dots3-note", model_types=("dots3_note_text",), blocks=("Dots3NoteTextMoE",),
    adapter=adapter("dots3_note_text"), hook="gate", reader=read_triple, layout=LAYOUT,
)
