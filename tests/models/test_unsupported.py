"""Every Mixture-of-Experts model type of transformers is either loadable or left out for a reason.

The model types enumerated are the keys of transformers' ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES``
(what ``AutoModelForCausalLM`` loads; encoder–decoder MoE such as Switch Transformers is not in
it). A model type is **MoE** when its config class declares an expert-count field — one of
:data:`EXPERT_COUNT_FIELDS` — either itself or in a sub-config class that is not a vision or
audio tower (``text_config`` of vision-language models, DBRX's ``ffn_config``). The rule reads
the declared dataclass fields of the class (transformers 5 configs are dataclasses) and
instantiates nothing, because:

* a declared count, not its default value, is what makes a type MoE: Gemma 4's ``num_experts``
  defaults to None (the dense variants share the model type), Hunyuan-V1-MoE's to 1, dots1's to
  None;
* some default configs do not even validate (``gemma4_assistant``).

``test_rule_sees_every_router`` guards the rule: any causal-LM config that declares a per-token
expert count (:data:`TOP_K_FIELDS`) must also declare an expert count, so a new spelling of
"number of experts" fails there instead of hiding a family.

Each MoE type must be in the registry (:data:`moescope.models.families.BY_MODEL_TYPE`, read at
run time) or in :data:`LEFT_OUT`, with the exception its tiny model raises on CPU in this
transformers version. So a new transformers version that adds an MoE type fails
``test_every_moe_type_is_supported_or_left_out`` until someone decides; an entry whose type gets
a family, or whose exception transformers fixes, fails too, and the table stays honest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest
import torch

#: Config fields that count routed experts (Mixtral/GPT-OSS, Qwen/OLMoE, DeepSeek, ERNIE/DBRX spellings).
EXPERT_COUNT_FIELDS = frozenset({"num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts"})
#: Config fields that count the experts each token goes to (to check the rule above sees every router).
TOP_K_FIELDS = frozenset({"num_experts_per_tok", "num_experts_per_token", "moe_topk", "moe_k", "top_k_experts"})
#: Sub-configs that are not the language model (a vision tower's experts do not make the LM MoE).
NON_TEXT_SUB_CONFIGS = ("vision", "audio")


@dataclass(frozen=True)
class LeftOut:
    """Why a model type is not supported: what its tiny model raises, and how to reproduce it.

    Attributes:
        error: the exception class raised.
        message: a substring of its message (matched literally).
        config: keyword arguments of the model type's config class for the tiny model.
        stage: where it raises: ``"config"`` (the config class), ``"from_config"``
            (``AutoModelForCausalLM.from_config``) or ``"forward"`` (a (2, 6) batch of token ids).
    """

    error: type[BaseException]
    message: str
    config: dict = field(default_factory=dict)
    stage: str = "forward"


#: model type -> why it is left out. Only entries whose exception was reproduced belong here.
#: (transformers 5.24: every MoE type not in the registry was found to build and run a forward
#: pass with a suitable tiny config, so none is left out for an exception yet.)
LEFT_OUT: dict[str, LeftOut] = {}

#: model type -> what moescope's view of an MoE layer cannot yet represent. These build and run in
#: transformers; moescope refuses them (``load_moe_model`` names the supported types) rather than
#: report numbers that would be wrong.
NOT_YET: dict[str, str] = {
    "longcat_flash": "zero-computation experts: the router scores E + Z experts, Z of them identities with no "
                     "weights (a token sent there adds w·x); MoELayerView has no weightless expert",
    "zaya": "the router is an MLP (down_proj, norm, fc1/fc2, out_proj) fed state from the previous layer, with "
            "an extra 'skip' class: there is no (E, H) router matrix for the view",
    "doge": "product-key routing over 2·√E keys; each expert is a pair of H-vectors, and the choices are "
            "not handed to any submodule (router_logits mixes tokens across the batch)",
    "inkling_text": "the router's rows include the shared experts (E + S, H), weighted by shared_gammas; "
                    "the on-disk layout cannot slice the shared rows off",
    "inkling2_loop_text": "the same block runs loop_num_passes times per forward; the recorder keeps one "
                          "capture per layer and pass",
    "gemma4": "the vision-language wrapper (gemma4_text, its language model, is supported); not yet proven on "
              "a tiny checkpoint",
    "dots3_note": "the vision-language wrapper (dots3_note_text, its language model, is supported); not yet "
                  "proven on a tiny checkpoint",
}


def _config_classes():
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return {t: CONFIG_MAPPING[t] for t in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES if t in CONFIG_MAPPING}


def declared_fields(config_class: type, seen: frozenset = frozenset()) -> set[str]:
    """The fields ``config_class`` declares (its MRO's annotations) and those of its language sub-configs."""
    names = {n for k in config_class.__mro__ for n in getattr(k, "__annotations__", {})}
    for key, sub in (getattr(config_class, "sub_configs", None) or {}).items():
        if any(word in key for word in NON_TEXT_SUB_CONFIGS) or not isinstance(sub, type) or sub in seen:
            continue                                    # AutoConfig placeholders name no fields
        names |= declared_fields(sub, seen | {config_class})
    return names


def moe_model_types() -> list[str]:
    """The causal-LM model types whose configs declare an expert count (the module's rule)."""
    return sorted(t for t, cls in _config_classes().items() if declared_fields(cls) & EXPERT_COUNT_FIELDS)


def _registry() -> dict:
    from moescope.models.families import BY_MODEL_TYPE

    return BY_MODEL_TYPE


def test_rule_sees_every_router():
    blind = sorted(t for t, cls in _config_classes().items()
                   if declared_fields(cls) & TOP_K_FIELDS and not declared_fields(cls) & EXPERT_COUNT_FIELDS)
    assert not blind, (f"these causal-LM configs declare a per-token expert count but none of the expert-count "
                       f"fields {sorted(EXPERT_COUNT_FIELDS)}; extend EXPERT_COUNT_FIELDS: {blind}")


@pytest.mark.parametrize("model_type, moe", [("mixtral", True), ("qwen2_moe", True), ("deepseek_v3", True),
                                             ("llama4", True), ("dbrx", True), ("gemma4_text", True),
                                             ("llama", False), ("mistral", False), ("qwen2", False)])
def test_rule_on_known_types(model_type, moe):
    assert (model_type in moe_model_types()) is moe


def test_every_moe_type_is_supported_or_left_out():
    registry = _registry()
    undecided = [t for t in moe_model_types() if t not in registry and t not in LEFT_OUT and t not in NOT_YET]
    assert not undecided, (f"{len(undecided)} MoE model types of this transformers version are neither supported "
                           f"(a family in moescope.models.families) nor in LEFT_OUT with the exception they raise "
                           f"nor in NOT_YET with what moescope lacks: {', '.join(undecided)}")


@pytest.mark.parametrize("model_type", sorted(NOT_YET))
def test_not_yet_is_refused_with_a_clear_error(model_type, tmp_path):
    """An MoE type moescope cannot yet represent: still MoE, not in the registry, and refused by
    ``load_moe_model`` before any weight is read, with a message naming the supported types."""
    import json

    from moescope.models import load_moe_model

    assert model_type in moe_model_types(), f"{model_type} is no longer a causal-LM MoE type: drop it from NOT_YET"
    family = _registry().get(model_type)
    assert family is None, f"{model_type} is now supported (family {family.name}): drop it from NOT_YET"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    refused = rf"model_type='{model_type}', not a supported MoE family; supported: .*Mixtral"
    with pytest.raises(ValueError, match=refused):
        load_moe_model(tmp_path)


@pytest.mark.parametrize("model_type", sorted(LEFT_OUT))
def test_left_out_is_an_unsupported_moe_type(model_type):
    assert model_type in moe_model_types(), f"{model_type} is no longer a causal-LM MoE type: drop it from LEFT_OUT"
    family = _registry().get(model_type)
    assert family is None, f"{model_type} is now supported (family {family.name}): drop it from LEFT_OUT"


@pytest.mark.parametrize("model_type", sorted(LEFT_OUT))
def test_left_out_still_raises(model_type):
    from transformers import AutoModelForCausalLM

    why = LEFT_OUT[model_type]
    if why.stage not in ("config", "from_config", "forward"):
        raise ValueError(f"LEFT_OUT[{model_type!r}].stage must be config, from_config or forward; got {why.stage!r}")
    config_class = _config_classes()[model_type]
    torch.manual_seed(0)
    with pytest.raises(why.error, match=re.escape(why.message)):
        config = config_class(**why.config)
        if why.stage == "config":
            return
        model = AutoModelForCausalLM.from_config(config).eval()
        if why.stage == "from_config":
            return
        with torch.no_grad():
            model(input_ids=torch.randint(3, min(getattr(config, "vocab_size", 300) or 300, 300), (2, 6)))
