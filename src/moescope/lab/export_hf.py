"""Save a lab model as the Hugging Face checkpoint of the transformers family that computes it.

``moescope analyze`` reads Hugging Face checkpoints (``from_pretrained`` on a local folder);
the lab trains its own :class:`~moescope.lab.model.TinyLM`. A lab run is exported only where a
transformers MoE family computes *exactly* the same function from the same parameters (one
stated exception, Qwen2-MoE's shared-expert gate): the same logits to float rounding, and the
same experts chosen for every token in every layer (the tests hold both against transformers
itself). Where no family does, the run is
refused, naming the router and the reason, before anything is written.

Which runs go where (:data:`EXPORTERS`, one record per family, and :data:`NO_FAMILY`, the
routers no family computes):

* ``arch="llama"`` is required: the nanogpt body (learned positions, LayerNorm) is computed
  by no transformers MoE family.
* top-k softmax, the k weights renormalised, no shared expert → **Mixtral**
  (``MixtralForCausalLM``: ``MixtralTopKRouter`` renormalises always).
* top-k softmax (renormalised or not) with ungated shared experts (DeepSeek-MoE's shape) →
  **Qwen2-MoE** (``Qwen2MoeForCausalLM`` with ``qkv_bias=False``): its shared expert is
  sigmoid-gated, so the gate weight is exported as 0 (a gate of exactly 1/2) and the shared
  down projection doubled, which is the lab's function to the last bit (:func:`_qwen2_moe`).
  Unrenormalised top-k *without* a shared expert has no family: Qwen3-MoE and OLMoE normalise
  q and k.
* DeepSeek-V3 routing (sigmoid scores, selection-only bias, groups) with ungated shared
  experts → **GLM-4-MoE** (``Glm4MoeForCausalLM``: the same router, standard multi-head
  attention with full-width RoPE when ``partial_rotary_factor=1``, one fused shared MLP of
  width ``n_shared_experts · moe_intermediate_size``). transformers' DeepSeek-V3 model itself
  cannot hold the run: its attention is multi-head *latent* attention (a normalised
  low-rank KV and one RoPE key shared by all heads), not the lab's q/k/v/o.

The details that exact equality rests on, all matched: RoPE in the rotate-half layout over
the whole head with θ = ``rope_theta`` (transformers' ``default`` rope type);
RMSNorm with ε = ``norm_eps`` inside the root, before attention, before the FFN and at the
end; attention scaled by 1/sqrt(head size), no biases, no q/k norms, as many key/value heads
as query heads; the output head tied to the token embedding (``tie_word_embeddings``);
Mixtral's and Qwen2-MoE's softmax over all experts in float32, then top-k, then renormalised
(Qwen2-MoE: when ``norm_topk_prob`` = ``normalize_topk``); GLM-4-MoE's
float32 sigmoid router, the ``e_score_correction_bias`` = the lab's ``selection_bias``,
``norm_topk_prob`` = ``normalize_topk``, ``routed_scaling_factor`` = the router's (1 in the
lab). Positions are 0 … T−1 in both, whatever the padding. Padding: the lab model and
transformers both keep padded keys out of attention and route every position, so the logits
agree at every real token, left or right padding alike (a padded position's own output may
differ: the lab lets a padded query attend to itself).

The export is written to a temporary folder beside ``out_dir`` and renamed into place, so a
reader (or a crash) never sees half a checkpoint.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tokenizers import Tokenizer
from torch import Tensor

from moescope._files import fsync_path, write_json_atomic
from moescope.lab.model import LMConfig, TinyLM
from moescope.lab.tokenizer import EOT, MASK, PAD, to_hf_tokenizer

if TYPE_CHECKING:
    from moescope.lab.train import RunResult

LAB_FILE = "moescope_lab.json"  # the lab config the export was made from, beside config.json
BESIDE = "hf"                   # a run's own export, beside its checkpoints: <run_dir>/hf


class NotExportableError(ValueError):
    """A lab config that no transformers family computes exactly; the message says why."""


@dataclass(frozen=True)
class Exporter:
    """One transformers family a lab run can be saved as.

    Attributes:
        family: the family's ``model_type`` (also its name in :mod:`moescope.models.families`).
        title: the human-readable name.
        router: the lab router (``MoESpec.router``) it takes.
        refuses: cfg -> why this family cannot compute ``cfg`` exactly, or None when it can
            (called only for configs with this ``router`` that passed the common checks).
        config: (cfg, special token ids) -> the transformers config.
        moe_tensors: one lab ``MoELayer`` -> its tensors by name under ``model.layers.{i}.mlp.``.
    """

    family: str
    title: str
    router: str
    refuses: Callable[[LMConfig], str | None]
    config: Callable[[LMConfig, dict], object]
    moe_tensors: Callable[[torch.nn.Module], dict[str, Tensor]]


# -- the families --------------------------------------------------------------------------------
def _common(cfg: LMConfig, special: dict) -> dict:
    """The transformers config fields every exported family shares (decoder body, tokens)."""
    return dict(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layer,
                num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_head,  # MHA: no grouped KV
                head_dim=cfg.d_model // cfg.n_head, hidden_act="silu", max_position_embeddings=cfg.seq_len,
                rms_norm_eps=cfg.norm_eps, tie_word_embeddings=True, attention_dropout=0.0,
                rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rope_theta)},
                initializer_range=0.02, use_cache=True, **special)


def _mixtral_refuses(cfg: LMConfig) -> str | None:
    spec = cfg.moe
    if spec.shared_experts:
        return "Mixtral has no shared expert"
    if not spec.normalize_topk:
        return ("Mixtral always renormalises the k weights (normalize_topk=False here), and the other families "
                "that take unrenormalised top-k softmax without a shared expert (Qwen3-MoE, OLMoE) normalise "
                "q and k")
    return None


def _mixtral_config(cfg: LMConfig, special: dict):
    from transformers import MixtralConfig

    spec = cfg.moe
    return MixtralConfig(**_common(cfg, special), intermediate_size=spec.expert_intermediate,
                         num_local_experts=spec.num_experts, num_experts_per_tok=spec.top_k,
                         router_jitter_noise=0.0, sliding_window=None)


def _mixtral_moe(layer) -> dict[str, Tensor]:
    return {"gate.weight": layer.router.weight, "experts.gate_up_proj": layer.experts.gate_up_proj,
            "experts.down_proj": layer.experts.down_proj}


def _qwen2_refuses(cfg: LMConfig) -> str | None:
    if not cfg.moe.shared_experts:
        return "Qwen2-MoE always has a shared expert (a zero-width one builds empty layers)"
    return None


def _qwen2_config(cfg: LMConfig, special: dict):
    from transformers import Qwen2MoeConfig

    spec = cfg.moe
    shared = spec.shared_experts * spec.shared_intermediate
    return Qwen2MoeConfig(**_common(cfg, special), moe_intermediate_size=spec.expert_intermediate,
                          intermediate_size=shared,  # the dense-layer width; no layer is dense here
                          shared_expert_intermediate_size=shared, num_experts=spec.num_experts,
                          num_experts_per_tok=spec.top_k, norm_topk_prob=spec.normalize_topk, qkv_bias=False,
                          use_sliding_window=False, decoder_sparse_step=1, mlp_only_layers=[])


def _qwen2_moe(layer) -> dict[str, Tensor]:
    """Qwen2-MoE's shared expert is sigmoid(x·w_g)·MLP(x); the lab's is MLP(x), ungated. With
    w_g = 0 the gate is sigmoid(0) = 1/2 exactly, and the MLP's down projection is stored doubled:
    every product and partial sum of 2W·h is exactly twice that of W·h (a power of two scales
    without rounding), so 1/2 · (2W)·h = W·h to the last bit. The exported shared expert's
    down projection is therefore 2× the lab's; its gate, up and input side are the lab's."""
    ffn = layer.shared.ffn
    return {"gate.weight": layer.router.weight, "experts.gate_up_proj": layer.experts.gate_up_proj,
            "experts.down_proj": layer.experts.down_proj,
            "shared_expert.gate_proj.weight": ffn.gate_proj.weight, "shared_expert.up_proj.weight": ffn.up_proj.weight,
            "shared_expert.down_proj.weight": 2 * ffn.down_proj.weight,
            "shared_expert_gate.weight": torch.zeros(1, ffn.gate_proj.weight.shape[1],
                                                     dtype=ffn.gate_proj.weight.dtype)}


def _glm_refuses(cfg: LMConfig) -> str | None:
    spec = cfg.moe
    if not spec.shared_experts:
        return ("DeepSeek-V3 routing without a shared expert: GLM-4-MoE always has one (n_shared_experts=0 "
                "builds empty layers) and DeepSeek-V3's transformers model has latent attention (MLA), "
                "not q/k/v/o; add shared experts (MoESpec.shared_experts) to export")
    width = spec.shared_experts * spec.shared_intermediate
    if width % spec.expert_intermediate:
        return (f"the fused shared MLP is {spec.shared_experts}·{spec.shared_intermediate} = {width} wide, and "
                f"GLM-4-MoE's is n_shared_experts·moe_intermediate_size, a multiple of the expert width "
                f"{spec.expert_intermediate}")
    return None


def _glm_config(cfg: LMConfig, special: dict):
    from transformers import Glm4MoeConfig

    spec = cfg.moe
    common = _common(cfg, special)
    common["rope_parameters"] = {**common["rope_parameters"], "partial_rotary_factor": 1.0}  # GLM's default: 0.5
    shared = spec.shared_experts * spec.shared_intermediate
    return Glm4MoeConfig(**common, moe_intermediate_size=spec.expert_intermediate,
                         intermediate_size=shared,  # the dense-layer width; no layer is dense here
                         n_routed_experts=spec.num_experts, num_experts_per_tok=spec.top_k,
                         n_shared_experts=shared // spec.expert_intermediate, routed_scaling_factor=1.0,
                         n_group=spec.n_group, topk_group=spec.topk_group, first_k_dense_replace=0,
                         norm_topk_prob=spec.normalize_topk, use_qk_norm=False, attention_bias=False,
                         num_nextn_predict_layers=0)


def _glm_moe(layer) -> dict[str, Tensor]:
    if layer.router.routed_scaling_factor != 1.0:  # the config above says 1, as DeepSeekV3Router.from_spec builds
        raise NotExportableError(f"router 'deepseek_v3' with routed_scaling_factor="
                                 f"{layer.router.routed_scaling_factor}: the lab builds 1.0")
    ffn = layer.shared.ffn
    return {"gate.weight": layer.router.weight, "gate.e_score_correction_bias": layer.router.selection_bias,
            "experts.gate_up_proj": layer.experts.gate_up_proj, "experts.down_proj": layer.experts.down_proj,
            "shared_experts.gate_proj.weight": ffn.gate_proj.weight,
            "shared_experts.up_proj.weight": ffn.up_proj.weight,
            "shared_experts.down_proj.weight": ffn.down_proj.weight}


EXPORTERS: tuple[Exporter, ...] = (
    Exporter("mixtral", "Mixtral", "topk", _mixtral_refuses, _mixtral_config, _mixtral_moe),
    Exporter("qwen2_moe", "Qwen2-MoE", "topk", _qwen2_refuses, _qwen2_config, _qwen2_moe),
    Exporter("glm4_moe", "GLM-4-MoE", "deepseek_v3", _glm_refuses, _glm_config, _glm_moe),
)

#: Lab routers that no transformers causal-LM family computes, and why.
NO_FAMILY: dict[str, str] = {
    "switch": ("transformers' Switch Transformers model is an encoder–decoder (T5 blocks, ReLU experts), and "
               "no decoder-only family drops tokens by expert capacity as the lab's Switch router does"),
    "cosine": ("no transformers family scores experts by cosine similarity with a learned temperature "
               "(X-MoE's router)"),
    "expert_choice": ("experts choose their tokens across the batch (not token-choice, not causal); no "
                      "transformers causal LM routes this way"),
    "soft": ("Soft MoE mixes a sequence's tokens into expert slots (not token-choice, not causal); no "
             "transformers causal LM computes it"),
}


def _reason(cfg: LMConfig) -> tuple[Exporter | None, str]:
    """The family that computes ``cfg`` exactly and "", or None and why none does."""
    if cfg.arch != "llama":
        return None, (f"arch={cfg.arch!r} (learned positions, LayerNorm, fused q/k/v) is computed by no "
                      "transformers MoE family; train with LMConfig(arch='llama')")
    if cfg.ffn == "dense":
        return None, "a dense model has no MoE layer for moescope analyze to read"
    if cfg.bidirectional:
        return None, "bidirectional attention (masked-token objective): transformers' MoE LMs are causal"
    router = cfg.moe.router
    if router in NO_FAMILY:
        return None, NO_FAMILY[router]
    refusals = []
    for exporter in EXPORTERS:  # the first family that computes the run exactly
        if exporter.router == router:
            why = exporter.refuses(cfg)
            if why is None:
                return exporter, ""
            refusals.append(why)
    if not refusals:
        return None, f"no transformers family is registered for router {router!r}"
    return None, "; ".join(refusals)


def exporter_for(cfg: LMConfig) -> Exporter:
    """The family ``cfg`` exports to; :class:`NotExportableError` naming the router and why if none."""
    exporter, why = _reason(cfg)
    if exporter is None:
        raise NotExportableError(f"router {cfg.router!r} is not exportable to Hugging Face: {why}")
    return exporter


def exportability(cfg: LMConfig) -> str:
    """One line: the family ``cfg`` exports to (``"Mixtral"``), or ``"not exportable: <reason>"``."""
    exporter, why = _reason(cfg)
    return exporter.title if exporter is not None else f"not exportable: {why}"


# -- the export ----------------------------------------------------------------------------------
def hf_state_dict(model: TinyLM, exporter: Exporter) -> dict[str, Tensor]:
    """The lab model's parameters under the names of ``exporter``'s live transformers model.

    Every tensor keeps its layout: the lab's expert banks are already transformers'
    ``gate_up_proj`` (E, 2I, H), gate rows first, and ``down_proj`` (E, H, I); linear
    weights are (out, in) in both. ``lm_head.weight`` is the token embedding (tied).
    """
    sd = {"model.embed_tokens.weight": model.wte.weight, "model.norm.weight": model.ln_f.weight,
          "lm_head.weight": model.wte.weight}
    for i, block in enumerate(model.blocks):
        pre = f"model.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            sd[f"{pre}self_attn.{name}.weight"] = getattr(block.attn, name).weight
        sd[f"{pre}input_layernorm.weight"] = block.ln_1.weight
        sd[f"{pre}post_attention_layernorm.weight"] = block.ln_2.weight
        for name, t in exporter.moe_tensors(block.ffn).items():
            sd[f"{pre}mlp.{name}"] = t
    return {k: v.detach().clone() for k, v in sd.items()}


def to_hf_model(model: TinyLM, *, special_tokens: dict | None = None):
    """The live transformers model (eval mode) that computes what ``model`` computes.

    ``special_tokens``: ``eos_token_id`` / ``pad_token_id`` / ``bos_token_id`` for the config
    (default: none). Raises :class:`NotExportableError` for a config no family computes.
    """
    exporter = exporter_for(model.cfg)
    config = exporter.config(model.cfg, {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None,
                                         **(special_tokens or {})})
    from transformers import AutoModelForCausalLM

    dtype = model.wte.weight.dtype
    hf = AutoModelForCausalLM.from_config(config, dtype=dtype)
    sd = hf_state_dict(model, exporter)
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    if missing or unexpected:  # a transformers version that renamed a part: fail, never save a partial model
        raise RuntimeError(f"{exporter.title} does not have the parameters moescope expects: "
                           f"missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    if hf.lm_head.weight.data_ptr() != hf.model.embed_tokens.weight.data_ptr():
        raise RuntimeError(f"{exporter.title}'s output head is not tied to its embedding")
    return hf.eval()


def export_hf(model: TinyLM, out_dir: str | os.PathLike, *, tokenizer: Tokenizer | None = None,
              overwrite: bool = False) -> Path:
    """Write ``model`` (and ``tokenizer``) as a Hugging Face checkpoint folder ``out_dir``.

    The folder holds ``config.json``, ``model.safetensors`` (transformers' own
    ``save_pretrained``), the tokenizer's files when one is given (``to_hf_tokenizer``), and
    ``moescope_lab.json`` (the lab config and the family). It is built in a temporary folder
    beside ``out_dir`` and renamed into place; an existing ``out_dir`` is replaced only with
    ``overwrite``. Raises :class:`NotExportableError` (nothing written) when no transformers
    family computes the model exactly, ``FileExistsError`` when ``out_dir`` exists.
    """
    out_dir = Path(out_dir)
    exporter = exporter_for(model.cfg)  # before anything is written
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass overwrite=True to replace it")
    special = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    if tokenizer is not None:
        special.update(eos_token_id=tokenizer.token_to_id(EOT), pad_token_id=tokenizer.token_to_id(PAD))
        if tokenizer.get_vocab_size() > model.cfg.vocab_size:
            raise ValueError(f"the tokenizer has {tokenizer.get_vocab_size()} tokens but the model's vocab_size "
                             f"is {model.cfg.vocab_size}")
    hf = to_hf_model(model, special_tokens=special)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; give the folder the usual mode
        with _quiet_progress():   # a lab exports dozens of runs: no "Writing model shards" bar for each
            hf.save_pretrained(tmp)
        if tokenizer is not None:
            # no model_max_length: analyze tokenises whole texts before cutting them into sequences, and
            # transformers warns of "indexing errors" past it; config.json's max_position_embeddings
            # already says how long the model's training sequences were
            to_hf_tokenizer(tokenizer).save_pretrained(tmp)
        write_json_atomic(tmp / LAB_FILE, {"family": exporter.family, "lab_config": model.cfg.to_dict(),
                                           "special_tokens": {"eos": EOT, "pad": PAD, "mask": MASK}})
        for f in tmp.iterdir():
            fsync_path(f)
        fsync_path(tmp)
        if out_dir.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".trash-{out_dir.name}.", dir=out_dir.parent))
            os.replace(out_dir, trash / out_dir.name)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, out_dir)  # the commit: one rename of a complete folder
        fsync_path(out_dir.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


@contextmanager
def _quiet_progress() -> Iterator[None]:
    """transformers' progress bars off for the block, as they were after it."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def export_checkpoint(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, *,
                      tokenizer: Tokenizer | str | os.PathLike | None = None, overwrite: bool = False) -> Path:
    """Export a lab checkpoint folder (``.../checkpoints/step_NNNNNN``) with :func:`export_hf`.

    ``tokenizer``: a ``tokenizers.Tokenizer`` or the path of the lab's ``tokenizer.json``.
    """
    from moescope.lab.train import load_model

    model = load_model(checkpoint)
    exporter_for(model.cfg)  # refuse before reading the tokenizer
    if tokenizer is not None and not isinstance(tokenizer, Tokenizer):
        tokenizer = Tokenizer.from_file(str(tokenizer))
    return export_hf(model, out_dir, tokenizer=tokenizer, overwrite=overwrite)


def export_runs(results: dict[str, RunResult], lab_dir: str | os.PathLike,
                out_dir: str | os.PathLike | None = None) -> dict[str, Path | str]:
    """Export the final checkpoint of every trained run in ``results`` to ``out_dir/<run name>``, or, with
    ``out_dir`` None, beside the run's checkpoints in ``<run_dir>/hf`` (:data:`BESIDE`).

    ``results``: run name -> :class:`~moescope.lab.train.RunResult` (what ``train_lab_runs``
    returns); ``lab_dir``: the lab folder they were trained in (its tokenizer goes beside each
    export). Returns run name -> the export folder, or ``"not exportable: <reason>"`` for a run
    no transformers family computes (nothing is written for it). An earlier export of the same
    run is replaced — except a run's own copy (``out_dir`` None) already made from its final checkpoint.
    """
    from moescope.lab.runs import LAB_TRAINING_DIR

    return _export(results, Path(lab_dir) / LAB_TRAINING_DIR, None if out_dir is None else Path(out_dir))


def export_beside(results: dict[str, RunResult], training_dir: str | os.PathLike) -> dict[str, Path | str]:
    """Each exportable run's own Hugging Face copy, ``<run_dir>/hf``, for runs trained in ``training_dir`` (the
    folder holding the tokenizer and ``runs/``): what :func:`~moescope.lab.runs.run_profile` leaves after training.
    A copy already made from the run's final checkpoint is kept as it is."""
    return _export(results, Path(training_dir), None)


def _export(results: dict[str, RunResult], training_dir: Path, out_dir: Path | None) -> dict[str, Path | str]:
    from moescope.lab import checkpoint as ckpt
    from moescope.lab.tokenizer import TOKENIZER_FILE

    tok_path = training_dir / TOKENIZER_FILE
    tokenizer = Tokenizer.from_file(str(tok_path)) if tok_path.exists() else None
    done: dict[str, Path | str] = {}
    for name, result in results.items():
        final = result.checkpoints[max(result.checkpoints)]
        state = ckpt.verify_checkpoint(final)
        if state is None:
            raise ValueError(f"{final} is not a complete checkpoint (missing files or hash mismatch)")
        exporter, why = _reason(LMConfig.from_dict(state["config"]["run"]["lm"]))
        if exporter is None:
            done[name] = f"not exportable: {why}"
            continue
        target = Path(result.run_dir) / BESIDE if out_dir is None else out_dir / name
        if out_dir is None and _made_from(target, final):
            done[name] = target
            continue
        done[name] = export_checkpoint(final, target, tokenizer=tokenizer, overwrite=True)
        if out_dir is None:
            write_json_atomic(target / SOURCE_FILE, {"checkpoint": Path(final).name})
    return done


SOURCE_FILE = "moescope_source.json"  # in a run's own copy: the checkpoint it was exported from


def _made_from(target: Path, checkpoint: str | os.PathLike) -> bool:
    """Whether ``target`` is a complete export of ``checkpoint`` (its source file names it)."""
    import json

    try:
        return json.loads((target / SOURCE_FILE).read_text())["checkpoint"] == Path(checkpoint).name
    except (OSError, ValueError, KeyError, TypeError):
        return False
