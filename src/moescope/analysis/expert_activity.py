r"""What each expert writes on real tokens: its mean output read as tokens, and the geometry of its outputs.

The weight-only half of the expert lens (:mod:`moescope.analysis.logit_lens`) reads an expert's
down projection; this module measures what the experts *do* on text. The model runs over real
tokens (attention mask 1) while a :class:`~moescope.models.RoutingRecorder` records the experts each
token chose (read from the router, never re-derived) and a forward pre-hook keeps the input the
experts read. Each chosen expert then runs *alone* on its tokens, giving its **unweighted** output
y = f_e(x) (H,): no combine weight, so Σ_e w_e · y_e over a token's chosen experts is the block's
routed output (checked on every batch where the block exposes that sum, see ``identity_error``).

**How one expert is run** — always with the model's own code, never a re-derived MLP (the view
does not carry activations, clamps, biases; :func:`expert_runner`):

* a transformers experts module called as ``experts(x, top_k_index, top_k_weights)`` (Mixtral,
  Qwen2-MoE, DeepSeek, GPT-OSS, Gemma 4, ... — every family but the ones below): called with every
  token routed to e alone with weight 1. The pre-hook sits on that module, so x is exactly what it
  reads (Gemma 4: after ``pre_feedforward_layernorm_2``, not the layer's input);
* experts kept as one module each (Switch Transformers' ``expert_{e}``): that module;
* moescope's own layers: ``Experts.expert(e, x)``; families whose experts module takes no routing
  (Llama 4: the router's score multiplies the expert's *input*): moescope's lift of the block
  (:func:`moescope.moe.from_hf`, tested equal to the block), on the block's input, i.e. the score
  set to 1 — for Llama 4 the identity Σ w·y does not hold, by the family's design;
* JetMoE (no experts module): its ``input_linear`` / ``activation`` / ``output_linear`` with one
  expert's group, as ``JetMoeMoE.forward`` calls them;
* soft routing (Soft MoE) is not measured: its experts read slots mixed from many tokens, never one
  token, so "its output on a token" does not exist (the layer is reported with that reason).

The expert runs in the model's dtype, as the block runs it; everything after (sums, spectra,
subspaces, projections) is float64.

**Per expert**, over the first ``max_tokens`` real tokens per layer:

* ``lens``: the mean output ȳ_e = Σ y / n_e over *all* its routed tokens, read through the final
  norm's gain and the unembedding (:func:`moescope.analysis.logit_lens.read_outputs`): the token ids
  with the largest logits of ``W_U (g ⊙ ȳ_e)`` (promoted) and the smallest (``lens_suppressed``).
* a **row sample** for the geometry: up to ``max_rows`` of its outputs, a seeded reservoir sample
  (Vitter 1985, Algorithm R) of the stream of its rows, so the sample covers the whole text, not
  its first documents; all rows when it has at most ``max_rows``.
* ``effective_rank`` of its rows Y_e (n_e, H) (uncentred: the subspace it writes into, its mean
  direction included): with λ_i = σ_i² the squared singular values (the energies) and
  p_i = λ_i / Σ λ, erank = exp(−Σ p_i log p_i) (Roy & Vetterli 2007 normalise σ_i, not σ_i²; the
  energies are what the subspace and interference measures below weigh). 1 for rows on one line,
  H for isotropic rows.
* ``rank``: its own energy rank, the least r whose top-r directions hold ``energy`` of ||Y_e||_F²;
  ``captured``: the share its top directions hold at the layer's common r (below).

**Per layer**, one subspace rank r for every expert, so that all pairs compare equal dimensions:
``rank`` if given, else the median (rounded down) of the experts' energy ranks, capped at H/2 (two
r-subspaces of R^H with r <= H/2 are never forced to intersect) and at half the experts' median row
count (so that about half of them have the 2r rows it needs; ``captured`` shows what the cap costs).
An expert takes part when it has at least max(4, 2r) rows (fewer cannot pin down r directions
against a null); the others are listed with ``reason`` and null values, never dropped. Each taking
part has its subspace Q_e (H, r), the top-r right singular vectors of Y_e (directions with no
energy, below :data:`DROP` of the top one, are left out: an expert that writes into fewer than r
dimensions has fewer; the overlap still divides by r). ``feasible_min`` is the least mean overlap G
subspaces of rank r in R^H can have (:func:`moescope.analysis.expert_null.feasible_min_overlap` / r):
above 0 when G·r > H, where exact orthogonality is impossible.

* ``overlap``: the mean over pairs of the mean cos² of the r principal angles between Q_a and Q_b,
  ||Q_aᵀ Q_b||_F² / r (Björck & Golub 1973): 0 for orthogonal subspaces, 1 for equal ones.
* ``interference`` of expert e: the share of its output energy Σ ||y||² that lies in the span of
  the *other* experts' subspaces (their bases stacked and orthonormalised; a pseudo-inverse of
  their Gram matrix), Σ ||P_{−e} y||² / Σ ||y||²: 0 when e writes where no other expert writes,
  1 when everything it writes another expert writes too. When the others' (G − 1)·r dimensions can
  fill R^H (``others_can_fill``, G the experts compared), it is near 1 by dimension alone, in the
  data and in the null alike: only the comparison with the null says anything then.
* **the null, matched to the data**: the rows of the experts taking part are pooled and dealt to
  them again at random, each keeping its row count (the rows, their norms, r and the group sizes
  are kept; only *which expert wrote which row* is shuffled), ``draws`` times; the same statistics
  are recomputed per draw. Reported: the null mean, the ratio observed / null mean with the
  order-statistic interval of observed / null_draw over draws and the permutation p-values
  (:mod:`moescope.stats`, ``permutation_ratio`` and ``permutation_pvalue``; ``p_value`` is the side
  "less": experts more separated than their own rows dealt at random; ``p_greater`` the other).
  Per expert, ``null_interference`` is the null mean of the group with that expert's row count and
  ``interference_p`` its p-value (side "less").

**Cost.** Memory: per layer at most E · ``max_rows`` sampled rows of H float32 (and no more than
``max_tokens`` · k), plus an (E, H) float64 sum. Time: the forwards, one expert call per expert
and batch, and per layer (draws + 1) × (E eigendecompositions of Gram matrices of width
min(max_rows, H), and E pseudo-inverses of width E·r for interference); interference, or its null,
is skipped (with the reason) above :data:`MAX_NULL_WORK` floating-point operations. ``draws=0``
skips every null. On a loaded machine small batched eigenproblems run on one thread
(:func:`_few_threads`).
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from moescope.analysis.logit_lens import TOP_TOKENS, final_norm_gain, read_outputs, unembedding
from moescope.analysis.output_geometry import (
    MAX_NULL_WORK,
    _check_geometry,
    _num,
    output_geometry,
)
from moescope.models.recorder import RoutingRecorder, first_tensor
from moescope.models.view import MoELayerView, RoutingRecord
from moescope.stats import DEFAULT_LEVEL

__all__ = ["MAX_NULL_WORK", "ExpertRunner", "LayerOutputs", "collect_outputs", "decode_activity", "expert_activity",
           "expert_runner", "output_geometry"]

IDENTITY_TOLERANCE = 1e-4   # ||Σ w·y − routed|| / ||routed|| allowed in float32 (seen: <= 5e-8 on every tiny family)
HALF_IDENTITY_TOLERANCE = 3e-2  # in bfloat16 / float16 (the block sums in 8 or 11 bits of mantissa)

_END = object()


# --------------------------------------------------------------------------- running one expert

@dataclass(frozen=True)
class ExpertRunner:
    """How one MoE layer's experts are run alone.

    Attributes:
        method: what is called, in words (reported with the layer).
        source: the module whose forward pre-hook's first tensor argument, flattened to (T, H), is what
            the experts read (one row per token of the routing record).
        run: ``run(e, x (n, H)) -> (n, H)`` expert e's unweighted output, in the model's dtype.
        routed: ``source``'s forward output -> (T, H) Σ_e w_e·f_e(x), the sum the block combines, for the
            identity check; None where the block exposes no such sum.
        release: called after each batch of the layer (drops a lifted copy of the weights), or None.
    """

    method: str
    source: nn.Module
    run: Callable[[int, Tensor], Tensor]
    routed: Callable[[object], Tensor] | None = None
    release: Callable[[], None] | None = None


def _flat(out) -> Tensor:
    t = out if isinstance(out, Tensor) else out[0]
    return t.reshape(-1, t.shape[-1])


def _takes_routing(experts: nn.Module) -> bool:
    """Whether ``experts.forward`` takes (hidden_states, top_k_index, top_k_weights) positionally."""
    try:
        params = list(inspect.signature(experts.forward).parameters.values())
    except (TypeError, ValueError):
        return False
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(p.kind in kinds for p in params) >= 3


def expert_runner(view: MoELayerView) -> ExpertRunner | str:
    """How ``view``'s experts are run one at a time (see the module docstring), or why they cannot be."""
    from moescope.models.families import BY_NAME
    from moescope.moe.layer import MoELayer

    block, n = view.module, view.num_experts
    if block is None:
        return f"{view.name}: a view read from disk has no live module to run"
    if view.scoring == "soft":
        return (f"{view.name}: soft routing feeds experts slots mixed from many tokens, never one token; an "
                "expert's output on a token does not exist")
    if isinstance(block, MoELayer):
        return ExpertRunner("moescope Experts.expert(e, x)", block, block.experts.expert)
    experts = getattr(block, "experts", None)
    routing = isinstance(experts, nn.Module) and _takes_routing(experts)   # the block calls it with the tokens
    if routing and isinstance(experts, nn.ModuleDict) and all(f"expert_{e}" in experts for e in range(n)):
        return ExpertRunner("the block's module experts.expert_{e} on its tokens", experts,
                            lambda e, x: experts[f"expert_{e}"](x), routed=_flat)
    if routing:
        def run(e: int, x: Tensor) -> Tensor:
            index = torch.full((x.shape[0], 1), e, dtype=torch.long, device=x.device)     # (n, 1): expert e only
            return experts(x, index, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device))  # weight 1

        return ExpertRunner("the block's experts module, every token routed to e alone with weight 1", experts, run,
                            routed=_flat)
    family = BY_NAME.get(view.family)
    if family is not None and family.from_hf is not None and family.matches(block):
        lifted: list[nn.Module] = []

        def run_lifted(e: int, x: Tensor) -> Tensor:
            if not lifted:   # a copy of this layer's expert weights, held for one batch (see release)
                from moescope.moe.lift import from_hf

                lifted.append(from_hf(block).experts)
            return lifted[0].expert(e, x)

        return ExpertRunner("moescope's lift of the block (from_hf): Experts.expert(e, x) on the block's input",
                            block, run_lifted, release=lifted.clear)
    if all(hasattr(block, a) for a in ("input_linear", "output_linear", "activation")):   # JetMoE
        def run_parallel(e: int, x: Tensor) -> Tensor:
            sizes = [0] * n
            sizes[e] = x.shape[0]
            gate, up = block.input_linear(x, sizes).chunk(2, dim=-1)
            return block.output_linear(block.activation(gate) * up, sizes)

        bias = getattr(block, "bias", None)
        return ExpertRunner("the block's input_linear / activation / output_linear with expert e's group", block,
                            run_parallel, routed=lambda out: _flat(out) - (0 if bias is None else bias))
    return (f"{view.name}: no module of the {view.family} block runs one expert alone (no experts module taking "
            "routing, no per-expert modules, no moescope lift)")


# --------------------------------------------------------------------------- collecting outputs

@dataclass
class LayerOutputs:
    """What one MoE layer's experts wrote on the tokens routed to them.

    Attributes:
        layer, name: the view's index and module path.
        method: how one expert was run (:class:`ExpertRunner`), or None with ``reason``.
        tokens: real tokens captured (at most ``max_tokens``).
        counts: (E,) tokens routed to each expert.
        sums: (E, H) float64 sum of each expert's unweighted outputs (the lens reads sums / counts).
        rows: per expert (n_e, H) float32 sampled outputs (reservoir; all of them when n_e <= max_rows).
        positions: per expert (n_e,) int64 index among the layer's captured tokens of each sampled row.
        weights: per expert (n_e,) float32 the combine weight the block gave that row.
        identity_error: max over batches of ||Σ_e w_e y_e − routed||_F / ||routed||_F (None: not checkable).
        reason: why the layer was not measured, or None.
    """

    layer: int
    name: str
    num_experts: int
    hidden: int
    max_rows: int
    seed: int
    method: str | None = None
    tokens: int = 0
    identity_error: float | None = None
    reason: str | None = None
    counts: np.ndarray = field(init=False)
    sums: Tensor = field(init=False)
    rows: list[Tensor] = field(init=False)
    positions: list[Tensor] = field(init=False)
    weights: list[Tensor] = field(init=False)
    _kept: list[int] = field(init=False, repr=False)
    _rngs: list = field(init=False, repr=False)

    def __post_init__(self) -> None:
        e, h = self.num_experts, self.hidden
        self.counts = np.zeros(e, dtype=np.int64)
        self.sums = torch.zeros(e, h, dtype=torch.float64)
        self.rows = [torch.empty(0, h) for _ in range(e)]
        self.positions = [torch.empty(0, dtype=torch.int64) for _ in range(e)]
        self.weights = [torch.empty(0) for _ in range(e)]
        self._kept = [0] * e
        self._rngs = [np.random.default_rng([self.seed, self.layer, i]) for i in range(e)]

    def add(self, e: int, y: Tensor, pos: Tensor, w: Tensor) -> None:
        """Expert e's outputs ``y`` (m, H) float32 at token positions ``pos`` (m,) with weights ``w`` (m,)."""
        seen, m = int(self.counts[e]), y.shape[0]
        self.counts[e] += m
        self.sums[e] += y.double().sum(0)
        kept = self._kept[e]
        room = min(m, self.max_rows - kept)
        if room > 0:   # the reservoir is not full yet: grow the buffer (doubling) and append
            need = kept + room
            if self.rows[e].shape[0] < need:
                size = min(self.max_rows, max(need, 2 * self.rows[e].shape[0]))
                self.rows[e] = _grown(self.rows[e], size)
                self.positions[e] = _grown(self.positions[e], size)
                self.weights[e] = _grown(self.weights[e], size)
            self.rows[e][kept:need] = y[:room]
            self.positions[e][kept:need] = pos[:room]
            self.weights[e][kept:need] = w[:room]
            self._kept[e] = kept = need
        if room < m:   # Algorithm R: row i of the stream (0-based) replaces slot j ~ U{0..i} when j < max_rows
            start = max(room, 0)
            stream = seen + np.arange(start, m)
            slots = self._rngs[e].integers(0, stream + 1)
            for j, s in zip(range(start, m), slots, strict=True):
                if s < self.max_rows:
                    self.rows[e][s], self.positions[e][s], self.weights[e][s] = y[j], pos[j], w[j]

    def finished(self) -> None:
        """Trim the buffers to the rows kept."""
        for e, k in enumerate(self._kept):
            self.rows[e], self.positions[e], self.weights[e] = (self.rows[e][:k], self.positions[e][:k],
                                                                 self.weights[e][:k])

    def mean(self, e: int) -> Tensor | None:
        """(H,) float64 expert e's mean output over all its routed tokens, or None if it had none."""
        return None if self.counts[e] == 0 else self.sums[e] / float(self.counts[e])


def _grown(t: Tensor, size: int) -> Tensor:
    out = torch.zeros(size, *t.shape[1:], dtype=t.dtype)
    out[: t.shape[0]] = t
    return out


class _Capture:
    """Forward (pre-)hooks keeping each layer's expert input and routed output of the current forward."""

    def __init__(self, runners: dict[int, ExpertRunner]) -> None:
        self.runners, self.inputs, self.outputs, self.on = runners, {}, {}, True
        self._handles = []

    def __enter__(self) -> _Capture:
        for index, r in self.runners.items():
            self._handles.append(r.source.register_forward_pre_hook(self._pre(index), with_kwargs=True))
            if r.routed is not None:
                self._handles.append(r.source.register_forward_hook(self._post(index)))
        return self

    def __exit__(self, *exc) -> None:
        while self._handles:
            self._handles.pop().remove()

    def _pre(self, index: int):
        def hook(module, args, kwargs):
            if self.on:
                x = first_tensor(args, kwargs)
                self.inputs[index] = None if x is None else x.detach().clone()   # the block may reuse it in place
        return hook

    def _post(self, index: int):
        def hook(module, args, output):
            if self.on:
                self.outputs[index] = self.runners[index].routed(output).detach().clone()
        return hook


def _forward(model: nn.Module, ids: Tensor, mask: Tensor) -> None:
    """One forward of a Hugging Face model (keywords, as ``analyze`` calls it) or a moescope ``TinyLM``."""
    device = next(model.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    if hasattr(model, "get_input_embeddings"):
        kwargs = {"input_ids": ids, "attention_mask": mask}
        if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
            kwargs["decoder_input_ids"] = ids   # teacher-force the same text through the decoder
        model(**kwargs)
    else:
        model(ids, attention_mask=mask)


def _check_batch(number: int, batch, vocab: int | None) -> tuple[Tensor, Tensor]:
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise ValueError(f"batch {number}: expected (input_ids, attention_mask); got {type(batch).__name__}")
    ids, mask = batch
    if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.is_floating_point() or ids.is_complex():
        raise ValueError(f"batch {number}: input_ids must be a 2-D (batch, sequence) integer tensor; got "
                         f"{tuple(ids.shape) if isinstance(ids, Tensor) else type(ids).__name__}")
    if vocab is not None and ids.numel() and not 0 <= int(ids.min()) <= int(ids.max()) < vocab:
        raise ValueError(f"batch {number}: token ids must lie in [0, {vocab}) (the model's vocabulary); got ids in "
                         f"[{int(ids.min())}, {int(ids.max())}]")
    if not isinstance(mask, Tensor) or tuple(mask.shape) != tuple(ids.shape):
        raise ValueError(f"batch {number}: attention_mask must have input_ids' shape {tuple(ids.shape)}; got "
                         f"{tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__}")
    return ids, mask


def _dense(rec: RoutingRecord, rows: Tensor) -> tuple[Tensor, Tensor]:
    """(n, E) bool chosen and float32 combine weights of the record's tokens ``rows``."""
    chosen = rec.chosen()[rows]
    w = torch.zeros(rec.indices.shape[0], rec.scores.shape[-1] + 1)
    w.scatter_(1, torch.where(rec.indices >= 0, rec.indices, w.shape[1] - 1), rec.weights.float())
    return chosen, w[rows, :-1]


def _take(acc: LayerOutputs, runner: ExpertRunner, rec: RoutingRecord, x: Tensor | None, routed: Tensor | None,
          max_tokens: int) -> int:
    """Add one batch of one layer to ``acc``; returns the real tokens taken."""
    t = rec.indices.shape[0]
    if x is None or x.numel() != t * acc.hidden:
        acc.reason = (f"the experts' input ({None if x is None else tuple(x.shape)}) does not hold one row per "
                      f"routed token (T={t}, H={acc.hidden}); cannot align tokens with their routing")
        return 0
    x = x.reshape(t, acc.hidden)
    real = rec.mask.nonzero().squeeze(1)[: max_tokens - acc.tokens]                      # (n,) token rows
    if real.numel() == 0:
        return 0
    chosen, w = _dense(rec, real)                                                        # (n, E), (n, E)
    positions = acc.tokens + torch.arange(real.numel())
    total = torch.zeros(real.numel(), acc.hidden) if routed is not None else None
    for e in range(acc.num_experts):
        sel = chosen[:, e].nonzero().squeeze(1)
        if sel.numel() == 0:
            continue
        y = runner.run(e, x[real[sel].to(x.device)]).float().cpu()
        y = y.reshape(sel.numel(), -1)          # (m, H); DBRX's experts return (m, 1, H)
        if y.shape[1] != acc.hidden:
            acc.reason = f"expert {e} returned {y.shape[1]} features per token, not H = {acc.hidden}"
            return 0
        acc.add(e, y, positions[sel], w[sel, e])
        if total is not None:
            total.index_add_(0, sel, y * w[sel, e, None])
    if total is not None:
        target = routed.reshape(t, acc.hidden)[real.to(routed.device)].float().cpu()
        err = float((total - target).norm() / target.norm().clamp_min(1e-30))
        acc.identity_error = max(acc.identity_error or 0.0, err)
        tolerance = IDENTITY_TOLERANCE if x.dtype in (torch.float32, torch.float64) else HALF_IDENTITY_TOLERANCE
        if err > tolerance:
            acc.reason = (f"the experts run alone do not add up to the block's routed output (relative error "
                          f"{err:.2e} > {tolerance:.0e}): this family's experts module is not called as assumed")
            return 0
    acc.tokens += real.numel()
    return int(real.numel())


def collect_outputs(model: nn.Module, views: list[MoELayerView], batches: Iterable, *, max_tokens: int = 2048,
                    max_rows: int = 512, seed: int = 0,
                    on_batch: Callable[[int], None] | None = None) -> list[LayerOutputs]:
    """Every expert's unweighted outputs on the first ``max_tokens`` real tokens of each layer.

    Args:
        model: a live, resident model (a Hugging Face causal LM, or a moescope ``TinyLM``).
        views: the MoE layers to measure (live modules).
        batches: iterable of ``(input_ids (B, S) int, attention_mask (B, S))``; consumed only until every layer
            has ``max_tokens`` real tokens.
        on_batch: called after each batch with the number of real tokens it added (a progress bar's update).

    Returns:
        one :class:`LayerOutputs` per view, in the order of ``views``.
    """
    _check_counts(max_tokens=max_tokens, max_rows=max_rows)
    _check_views(model, views)
    runners, accs = {}, {}
    for v in views:
        accs[v.index] = LayerOutputs(layer=v.index, name=v.name, num_experts=v.num_experts, hidden=v.hidden,
                                     max_rows=max_rows, seed=seed)
        runner = expert_runner(v)
        if isinstance(runner, str):
            accs[v.index].reason = runner
        else:
            runners[v.index] = runner
            accs[v.index].method = runner.method
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else getattr(model, "wte", None)
    vocab = embeddings.num_embeddings if isinstance(embeddings, nn.Embedding) else None
    was_training = model.training
    model.eval()
    try:
        with RoutingRecorder(model, views) as rec, _Capture(runners) as cap, torch.no_grad():
            stream = iter(batches)
            for number in itertools.count():
                live = [i for i in runners if accs[i].reason is None and accs[i].tokens < max_tokens]
                batch = next(stream, _END) if live else _END    # no batch is read once every layer is full
                if batch is _END:
                    break
                ids, mask = _check_batch(number, batch, vocab)
                cap.inputs.clear()
                cap.outputs.clear()
                rec.set_batch(ids, mask)
                _forward(model, ids, mask)
                records = {r.layer: r for r in rec.pop()}
                cap.on = False   # running experts alone must not overwrite the captures
                taken = []
                try:
                    for i in live:
                        if i in records:
                            taken.append(_take(accs[i], runners[i], records[i], cap.inputs.get(i), cap.outputs.get(i),
                                               max_tokens))
                        if runners[i].release is not None:
                            runners[i].release()
                finally:
                    cap.on = True
                if on_batch is not None:
                    on_batch(max(taken, default=0))
    finally:
        model.train(was_training)
    for acc in accs.values():
        acc.finished()
    return [accs[v.index] for v in views]


def _check_counts(**values: int) -> None:
    for name, v in values.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer; got {name}={v!r}")


def _check_views(model: nn.Module, views: list[MoELayerView]) -> None:
    if not isinstance(views, (list, tuple)) or not views or not all(isinstance(v, MoELayerView) for v in views):
        raise ValueError(f"views must be a non-empty list of MoELayerView; got {type(views).__name__} "
                         f"{views!r:.80}")
    indices = [v.index for v in views]
    if len(set(indices)) != len(indices):
        raise ValueError(f"views must name each MoE layer once; got layer indices {indices}")
    if getattr(model, "moescope_streamer", None) is not None:
        raise ValueError("this model is layer-streamed: its expert weights exist only inside each forward, and "
                         "running one expert alone needs them resident; load the model in memory")
    for v in views:
        if v.module is None:
            raise ValueError(f"view {v.name!r} has no live module (read from disk?); load the model to measure it")
        if any(p.is_meta for p in v.module.parameters()):
            raise ValueError(f"{v.name}: its weights are offloaded (meta tensors outside the forward); running one "
                             "expert alone needs them resident; load the model without offloading")


# --------------------------------------------------------------------------- the measurement

def expert_activity(model: nn.Module, views: list[MoELayerView], batches: Iterable, *, max_tokens: int = 2048,
                    max_rows: int = 512, rank: int | None = None, energy: float = 0.9, draws: int = 199,
                    seed: int = 0, top: int = TOP_TOKENS, on_batch: Callable[[int], None] | None = None) -> dict:
    """Per MoE layer and expert: the tokens its mean output promotes, and the geometry of its outputs on real tokens.

    Args:
        model: a live, resident model (a Hugging Face causal LM, or a moescope ``TinyLM``).
        views: the MoE layers to measure (:func:`~moescope.models.find_moe_layers`; live modules).
        batches: iterable of ``(input_ids (B, S) int, attention_mask (B, S), 1 = real token)``; consumed until
            every layer has ``max_tokens`` real tokens.
        max_tokens: real tokens per layer (the first ones of ``batches``).
        max_rows: output rows kept per expert for the geometry (a seeded reservoir sample).
        rank: the common subspace rank r in [1, H/2], or None: the median energy rank of the layer's experts.
        energy: share of an expert's output energy its own rank holds, in (0, 1].
        draws: permutation draws of the null (0: none; else >= 39).
        seed: seeds the reservoir samples and the permutations.
        top: token ids listed per lens.
        on_batch: called after each batch with the real tokens it added (``tqdm.update``; total ``max_tokens``).

    Returns:
        JSON-ready (no NaN: None)::

            {"max_tokens", "max_rows", "rank", "energy", "draws", "seed", "level", "sample": "reservoir", "top",
             "lens_reason",                          # why no lens (a model without an unembedding), or None
             "layers": [{
                "layer", "name", "method",           # view index, module path, how one expert was run
                "tokens",                            # real tokens captured in this layer
                "hidden", "num_experts",
                "identity_error",                    # max ||Σ w·y − block's routed output|| / ||routed||, or None
                "reason",                            # why the layer was not measured, or None
                "rank", "rank_rule", "energy",       # common subspace rank r; "fixed" | "energy"; energy
                "experts_compared",                  # experts with >= max(4, 2r) rows
                "feasible_min",                      # least mean overlap that many r-subspaces of R^H can have
                "experts": [{
                    "expert", "tokens",              # tokens routed to it
                    "rows",                          # output rows sampled for the geometry
                    "mean_norm",                     # ||mean output||, or None without tokens
                    "lens", "lens_suppressed",       # token ids its mean output promotes / suppresses
                    "effective_rank", "rank",        # exp(entropy of σ²/Σσ²); its own energy rank
                    "captured",                      # share of its energy in its top r (the layer's r) directions
                    "interference",                  # share of its output energy in the others' span
                    "null_interference",             # its null mean
                    "interference_p",                # permutation p-value, side "less"
                    "reason"}],                      # why values are null, or None
                "overlap": {"observed", "null_mean", "ratio", "interval", "p_value", "p_greater", "draws",
                            "null",                  # the draws themselves (moescope.stats recomputes from them)
                            "reason"},               # mean pairwise mean cos² of principal angles
                "interference": {same keys,          # mean over the compared experts of their interference
                                 "others_can_fill"}, # (G − 1)·r >= H: near 1 by dimension alone
                "matrix"}]}                          # (E, E) pairwise mean cos² (None off the compared), E <= 64

        ``ratio`` is observed / null mean, ``interval`` its order-statistic interval over draws (None when
        too few draws), ``p_value`` the permutation p-value that the observed is this small by chance.
    """
    _check_counts(max_tokens=max_tokens, max_rows=max_rows, top=top)
    _check_geometry(rank=rank, energy=energy, draws=draws, level=DEFAULT_LEVEL)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got seed={seed!r}")
    if on_batch is not None and not callable(on_batch):
        raise ValueError(f"on_batch must be callable or None; got {type(on_batch).__name__}")
    _check_views(model, views)
    if rank is not None and rank > max(1, min(v.hidden for v in views) // 2):
        raise ValueError(f"rank must lie in [1, H/2] = [1, {max(1, min(v.hidden for v in views) // 2)}]; "
                         f"got rank={rank}")
    try:   # an encoder (Switch Transformers' encoder model) has no unembedding: geometry without the lens
        w_u, gain, no_lens = unembedding(model), final_norm_gain(model), None
    except ValueError as err:
        w_u, gain, no_lens = None, None, str(err)
    collected = collect_outputs(model, views, batches, max_tokens=max_tokens, max_rows=max_rows, seed=seed,
                                on_batch=on_batch)
    device = next(model.parameters()).device
    layers = []
    for acc in collected:
        layers.append(_layer_result(acc, w_u, gain, rank=rank, energy=energy, draws=draws, seed=seed, top=top,
                                    device=device))
    return {"max_tokens": max_tokens, "max_rows": max_rows, "rank": rank, "energy": energy, "draws": draws,
            "seed": seed, "level": DEFAULT_LEVEL, "sample": "reservoir", "top": top, "lens_reason": no_lens,
            "layers": layers}


def _layer_result(acc: LayerOutputs, w_u: Tensor | None, gain: Tensor | None, *, rank, energy, draws, seed, top,
                  device) -> dict:
    """One layer's JSON: the lens of every expert's mean output and the geometry of its sampled rows."""
    reason = acc.reason or (None if acc.tokens else "no real tokens reached this layer")
    head = {"layer": acc.layer, "name": acc.name, "method": acc.method, "tokens": acc.tokens, "hidden": acc.hidden,
            "num_experts": acc.num_experts, "identity_error": _num(acc.identity_error), "reason": reason}
    means = {e: acc.mean(e) for e in range(acc.num_experts)} if reason is None else {}
    means = {e: m for e, m in means.items() if m is not None}
    lens = {}
    if means and w_u is not None:
        lens = dict(zip(means, read_outputs(torch.stack(list(means.values())), w_u, gain, top=top), strict=True))
    rows = acc.rows if reason is None else [torch.empty(0, acc.hidden)] * acc.num_experts
    geometry = output_geometry(rows, hidden=acc.hidden, rank=rank if reason is None else None, energy=energy,
                               draws=draws, seed=[seed, acc.layer], device=device)
    experts = []
    for e, g in enumerate(geometry.pop("experts")):
        if reason is not None:
            g["reason"] = reason
        elif acc.counts[e] == 0:
            g["reason"] = "no token was routed to this expert"
        promoted, suppressed = lens.get(e, ([], []))
        experts.append({"expert": e, "tokens": int(acc.counts[e]), "rows": g.pop("rows"),
                        "mean_norm": _num(means[e].norm()) if e in means else None,
                        "lens": promoted, "lens_suppressed": suppressed,
                        **{k: v for k, v in g.items() if k != "expert"}})
    return {**head, **geometry, "experts": experts}


def decode_activity(result: dict, decode: Callable[[int], str]) -> dict:
    """``result`` of :func:`expert_activity` with every lens token id replaced by ``decode(id)`` (same structure)."""
    keys = ("lens", "lens_suppressed")
    return {**result, "layers": [{**layer, "experts": [{**e, **{k: [decode(t) for t in e[k]] for k in keys}}
                                                       for e in layer["experts"]]}
                                 for layer in result["layers"]]}
