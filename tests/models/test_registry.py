"""The common checks, run on every family of the registry (scikit-learn's ``parametrize_with_checks``).

Every :class:`~moescope.models.family.Family` that loads checkpoints (has ``model_types``) must have
a tiny checkpoint builder ``tests/models/tiny/<name>.py`` named by the family or one of its model
types; a family without one fails here. Each family's tiny checkpoint is saved to disk, loaded with
``load_moe_model`` and put through:

* ``layers_found`` — one view per block of the family in the model (>= 1), each with the family's name;
* ``routing_recorded`` — under :class:`RoutingRecorder`, on a padded batch, with extra hooks on the
  family's ``hook`` module and on the block's experts: the recorded (index, weight) pairs equal the
  family's reader applied to what the router returned, and those the block handed to its experts
  (where the experts' arguments carry them); the recorded expert counts equal a bincount recount;
* ``disk_equals_live`` — the layers streamed from the safetensors files by ``open_checkpoint`` (the
  family's on-disk ``Layout``) hold the live views' router, biases, every expert's gate / up / down
  and the shared experts, value for value;
* ``ranked_selects`` — what the record says the top-k ranked (``RoutingRecord.ranked()``, plus the view's
  selection bias) reproduces the recorded expert set of every token, wherever no group limit applies; the
  logits a record keeps for a logit-ranking family are x·Wᵀ of the block's input;
* ``from_hf`` (families with a converter) — ``moescope.moe.from_hf`` of a live block reproduces its output.
"""

from __future__ import annotations

import re

import pytest
import tiny_checkpoints
import torch

from moescope.analysis.checkpoint import open_checkpoint
from moescope.analysis.routing import RoutingStats
from moescope.models import BY_MODEL_TYPE, BY_NAME, FAMILIES, Family, RoutingRecorder
from moescope.moe import from_hf
from moescope.moe.lift import converters

TEXTS = ["def add(a, b):\n    return a + b  # almost orthogonal", "Experts specialise.", "x = 3"]
LOADED = [f for f in FAMILIES if f.model_types]


def builders(family: Family) -> list[str]:
    """The tiny checkpoints of ``family``: the files named by the family or one of its model types (a
    model type with its own on-disk names, e.g. sarvam_moe in glm4_moe, has its own file)."""
    return list(dict.fromkeys(n for n in (family.name, *family.model_types) if n in tiny_checkpoints.BUILDERS))


def builder(family: Family) -> str:
    """The family's first tiny checkpoint; a family without one fails."""
    names = builders(family)
    if not names:
        pytest.fail(f"family {family.name!r} has no tiny checkpoint: add tests/models/tiny/{family.name}.py "
                    "defining build() (see tests/models/tiny/_common.py)")
    return names[0]


def _close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    """Equal values after casting ``got`` to ``want``'s dtype."""
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert torch.equal(got.to(want.dtype), want), f"{what}: values differ"


def _canon(indices: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's pairs ordered by expert index, -1 slots last with weight 0, for set equality."""
    indices, weights = indices.long(), weights.float().masked_fill(indices < 0, 0.0)
    key = indices.masked_fill(indices < 0, 1 << 30)
    order = key.argsort(dim=-1, stable=True)
    return indices.gather(-1, order), weights.gather(-1, order)


def _handed(args: list[torch.Tensor], tokens: int, num_experts: int):
    """The (indices (T, k), weights (T, k)) an experts module was called with, or None when its
    arguments do not carry them (Llama 4's experts get the router-weighted input instead)."""
    ints = [a for a in args if not a.is_floating_point() and a.dim() >= 2 and a.shape[0] == tokens]
    floats = [a for a in args if a.is_floating_point() and a.numel() > 0 and a.shape[0] == tokens]
    for idx in ints:
        if idx.dim() == 2:                                   # indices (T, k) and weights (T, k)
            w = next((f for f in floats if f.shape == idx.shape), None)
            if w is not None:
                return idx, w
        if idx.dim() == 3 and idx.shape[-1] == num_experts:  # a capacity-masked one-hot (T, k, E)
            onehot = idx.reshape(tokens, -1, num_experts)
            w = next((f for f in floats if f.numel() == tokens * onehot.shape[1]), None)
            if w is not None:
                kept = onehot.bool().any(-1)
                return onehot.argmax(-1).masked_fill(~kept, -1), w.reshape(tokens, -1) * kept
    return None


@pytest.fixture(scope="module")
def run(loaded):
    """family name -> one recorded forward pass of its tiny checkpoint, with the test's own hooks."""
    cache: dict[str, dict] = {}

    def get(family: Family, name: str) -> dict:
        if name in cache:
            return cache[name]
        model, tok, views = loaded(name)
        batch = tok(TEXTS, return_tensors="pt", padding=True)
        seen: dict[int, dict] = {v.index: {"router": [], "experts": []} for v in views}
        handles = []
        for v in views:
            target = v.module.get_submodule(family.hook) if family.hook else v.module
            handles.append(target.register_forward_hook(
                lambda m, a, out, i=v.index: seen[i]["router"].append(out)))
            handles.append(v.module.register_forward_pre_hook(
                lambda m, a, kw, i=v.index: seen[i].__setitem__("x", (a or tuple(kw.values()))[0].detach().clone()),
                with_kwargs=True))
            experts = getattr(v.module, "experts", None)
            if isinstance(experts, torch.nn.Module):
                handles.append(experts.register_forward_pre_hook(
                    lambda m, a, kw, i=v.index: seen[i]["experts"].append(
                        [t.detach().clone() for t in (*a, *kw.values()) if torch.is_tensor(t)]),
                    with_kwargs=True))
        try:
            with RoutingRecorder(model, views) as rec, torch.no_grad():
                model(**batch)
        finally:
            for h in handles:
                h.remove()
        cache[name] = dict(model=model, views=views, batch=batch, seen=seen, records=rec.records)
        return cache[name]

    return get


# -- the checks -------------------------------------------------------------------------------------
def check_layers_found(family: Family, name: str, loaded, run, checkpoint) -> None:
    model, _, views = loaded(name)
    blocks = [name for name, m in model.named_modules() if family.matches(m)]
    assert len(blocks) > 0, f"the tiny {family.name} model holds no {', '.join(map(str, family.blocks))}"
    assert [v.name for v in views] == blocks
    assert all(v.family == family.name for v in views)
    assert BY_NAME[family.name] is family


def check_routing_recorded(family: Family, name: str, loaded, run, checkpoint) -> None:
    r = run(family, name)
    real = r["batch"]["attention_mask"].bool().reshape(-1)
    assert (~real).any(), "the batch must contain padding"
    stats = RoutingStats([v.num_experts for v in r["views"]], [v.top_k for v in r["views"]])
    for view, rec in zip(r["views"], r["records"], strict=True):
        stats.update(rec)
        seen = r["seen"][view.index]
        assert len(seen["router"]) == 1, f"{family.hook or 'the block'} ran {len(seen['router'])} times in one pass"
        tokens = rec.indices.shape[0]
        idx, w = _canon(rec.indices, rec.weights)
        # the family's own reader on what the router returned
        read_idx, read_w, _ = family.reader(seen["router"][0], view)
        want_idx, want_w = _canon(read_idx, read_w)
        assert torch.equal(idx, want_idx)
        torch.testing.assert_close(w, want_w, rtol=1e-5, atol=1e-6)
        # what the block handed its experts, where the experts' arguments say it
        handed = _handed(seen["experts"][0], tokens, view.num_experts) if len(seen["experts"]) == 1 else None
        used = rec.indices
        if handed is not None:
            got_idx, got_w = _canon(*handed)
            assert torch.equal(idx, got_idx), \
                f"layer {view.index}: recorded experts differ from those handed to the experts module"
            torch.testing.assert_close(w, got_w, rtol=1e-5, atol=1e-6)
            used = handed[0]
        # counts: a bincount of the used experts over real tokens
        valid = (used >= 0) & real[:, None]
        recount = torch.bincount(used[valid], minlength=view.num_experts)
        assert torch.equal(stats.layers[view.index].counts, recount)


def _block_number(name: str) -> int | None:
    """The decoder block number in a live module path (``model.layers.3.mlp`` -> 3)."""
    found = re.search(r"(?:layers|blocks|block|h)\.(\d+)(?:\.|$)", name)
    return None if found is None else int(found.group(1))


def _pair_layers(views, layers) -> list:
    """Each live view with its on-disk layer: the one whose prefix its module path starts with (a
    checkpoint may hold more MoE layers than the loaded model, e.g. Switch's decoder); else, when the
    live and on-disk names differ (a renamed backbone: ``backbone.layers.2`` on disk, ``model.layers.2``
    live), the on-disk layer with the same block number."""
    by_prefix = [[lay for lay in layers if live.name == lay.name or live.name.startswith(lay.name + ".")]
                 for live in views]
    if all(len(found) == 1 for found in by_prefix):
        return [(live, found[0]) for live, found in zip(views, by_prefix, strict=True)]
    pairs = []
    for live in views:
        found = [lay for lay in layers if lay.block == _block_number(live.name)]
        assert len(found) == 1, (f"live MoE layer {live.name} vs on disk {[lay.name for lay in layers]}: "
                                 "cannot pair it by prefix or block number")
        pairs.append((live, found[0]))
    return pairs


def check_disk_equals_live(family: Family, name: str, loaded, run, checkpoint) -> None:
    _, _, views = loaded(name)
    ckpt = open_checkpoint(checkpoint(name))
    assert ckpt.layout is family.layout and BY_MODEL_TYPE[ckpt.model_type] is family
    pairs = _pair_layers(views, ckpt.layers)
    for live, lay in pairs:
        d = lay.view()
        assert (d.num_experts, d.scoring) == (live.num_experts, live.scoring)
        _close(d.router_weight, live.router_weight, f"{live.name} router")
        for what in ("router_bias", "selection_bias"):
            got, want = getattr(d, what), getattr(live, what)
            assert (got is None) == (want is None), \
                f"{live.name} {what}: on disk {got is not None}, live {want is not None}"
            if want is not None:
                _close(got.reshape(want.shape), want, f"{live.name} {what}")
        for e in range(live.num_experts):
            got, want = d.expert(e), live.expert(e)
            for m in ("gate", "up", "down"):
                g, wnt = getattr(got, m), getattr(want, m)
                assert (g is None) == (wnt is None), f"{live.name} expert {e} {m}"
                if wnt is not None:
                    _close(g, wnt, f"{live.name} expert {e} {m}")
        assert len(d.shared) == len(live.shared), f"{live.name}: shared experts on disk vs live"
        for j, (got, want) in enumerate(zip(d.shared, live.shared, strict=True)):
            got, want = got(), want()
            for m in ("gate", "up", "down"):
                g, wnt = getattr(got, m), getattr(want, m)
                assert (g is None) == (wnt is None), f"{live.name} shared {j} {m}"
                if wnt is not None:
                    _close(g, wnt, f"{live.name} shared {j} {m}")
    assert len(pairs) == len(views) > 0


#: Sigmoid routers whose top-k ranks the raw logits (+ any selection bias), read from transformers' routers:
#: Llama4Router (topk of router_logits), Kolibri1TopKRouter (topk of logits + e_score_correction_bias),
#: Cohere2MoeTopKRouter (topk of router_logits, then sigmoid when expert_selection_fn="sigmoid").
RANKS_LOGITS = {"llama4", "kolibri1", "cohere2_moe"}


def check_ranked_selects(family: Family, name: str, loaded, run, checkpoint) -> None:
    assert (family.selection_logits is not None) == (family.name in RANKS_LOGITS)
    r = run(family, name)
    checked = 0
    for view, rec in zip(r["views"], r["records"], strict=True):
        x = r["seen"][view.index]["x"].reshape(-1, view.hidden)
        if family.ranks_logits(view.scoring):
            want = x @ view.router_weight.t() + (0 if view.router_bias is None else view.router_bias)
            torch.testing.assert_close(rec.selection, want, rtol=1e-5, atol=1e-5)
        else:
            assert rec.selection is None
        hashed = family.name == "deepseek_v4" and view.selection_bias is None  # choice from the token id
        if view.n_group > 1 or view.scoring == "soft" or view.top_k >= view.num_experts or hashed:
            continue   # group limits (and hash tables) choose outside the plain top-k: a lower bound only
        ranked = rec.ranked() + (0 if view.selection_bias is None else view.selection_bias.float())
        top = ranked.topk(view.top_k, dim=-1).indices.sort(-1).values
        full = (rec.indices >= 0).all(-1)         # dropped (Switch) or underflowed (Llama 4) slots aside
        assert torch.equal(top[full], rec.indices.sort(-1).values[full]), \
            f"{view.name}: the top-k of what the record ranks is not the recorded choice"
        checked += 1
    if not any(v.n_group > 1 for v in r["views"]) and family.name != "deepseek_v4":
        assert checked > 0


def check_from_hf(family: Family, name: str, loaded, run, checkpoint) -> None:
    r = run(family, name)
    for view in r["views"]:
        block = view.module
        assert converters()[type(block).__name__] is family.from_hf
        x = r["seen"][view.index]["x"]
        layer = from_hf(block)
        with torch.no_grad():
            out = block(x)
            want = (out[0] if isinstance(out, tuple) else out).reshape(x.shape)
            got = layer(x).hidden
        scale = max(1.0, want.abs().max().item())
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * scale)


CHECKS = {"layers_found": check_layers_found, "routing_recorded": check_routing_recorded,
          "disk_equals_live": check_disk_equals_live, "ranked_selects": check_ranked_selects,
          "from_hf": check_from_hf}


def _cases():
    for family in LOADED:
        for name in builders(family) or [family.name]:
            for kind, check in CHECKS.items():
                if kind == "from_hf" and family.from_hf is None:
                    continue
                label = family.name if name == family.name else f"{family.name}[{name}]"
                yield pytest.param(family, name, check, id=f"{label}-{kind}")


@pytest.mark.parametrize(("family", "name", "check"), list(_cases()))
def test_common_checks(family, name, check, loaded, run, checkpoint):
    builder(family)
    check(family, name, loaded, run, checkpoint)


@pytest.mark.parametrize("family", LOADED, ids=[f.name for f in LOADED])
def test_every_family_has_a_tiny_checkpoint(family):
    assert builder(family) in tiny_checkpoints.BUILDERS


def test_every_tiny_checkpoint_belongs_to_a_family():
    orphans = [n for n in tiny_checkpoints.BUILDERS if n not in BY_NAME and n not in BY_MODEL_TYPE]
    assert not orphans, f"tests/models/tiny/ files with no family in the registry: {orphans}"
