"""HypLoRA against LoRA at equal rank: fine-tuning a small LM on multi-step arithmetic, harder problems held out.

The lab question of claim 19 (HypLoRA, Yang et al. 2024, reports up to +13.0% on AQuA): is low-rank
adaptation on the hyperboloid (:mod:`moescope.curved_models.hyplora`) better than Euclidean LoRA of
the same rank and the same trainable parameter count, on a reasoning task whose hard cases were not
seen in fine-tuning? And the paper's motivation, measured on the same model: are its token
embeddings more tree-like (lower relative δ) than a Gaussian cloud of the same mean and covariance?

* **Base model.** ``base`` is a trained lab run (a checkpoint directory ``.../step_NNNNNN``, or a
  run directory holding ``checkpoints/``); its tokenizer is the ``tokenizer.json`` found in it or
  above it. Without one, a tiny dense :class:`~moescope.lab.model.TinyLM` is pre-trained here on
  the lab corpus's math domain (:func:`~moescope.lab.corpus.math_documents`: sums, differences,
  products, equations, derivatives), character-level, so the experiment is self-contained.
* **Task.** Chains of additions and subtractions written out step by step, the way the lab corpus
  writes one step (``12 + 7 - 3 = 19 - 3 = 16``); the prompt ends at the first ``=``. Fine-tuning
  sees chains of ``train_ops`` operations; held out are chains with ``hard_ops`` (one more step)
  and, as an in-distribution check, fresh chains of the training lengths.
* **Pairing.** Per seed, HypLoRA and LoRA start from the same A (one seeded generator each, same
  draws), see the same batches in the same order, and use the same optimiser and steps, so the
  seed-level difference isolates the geometry of the update.
* **Metrics.** Answer-token loss (mean cross entropy over the completion's tokens, teacher forced)
  and exact-answer accuracy (greedy decoding; the number after the last ``=`` must equal the
  answer) on each held-out set, per seed and method, and for the base model without an adapter.
* **δ-hyperbolicity.** Gromov's four-point δ, exact over all quadruples
  (:func:`~moescope.geometry.curved.hyperbolicity.four_point_delta`), relative to the diameter, of
  (a) the token embedding rows and (b) the base model's final hidden states at the tokens of the
  hard problems (the paper's prompt-level view), each against ``delta_draws`` Gaussian clouds of
  the same mean and covariance (:func:`~moescope.geometry.curved.hyperbolicity.matched_gaussian`).
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from moescope.curved_models.hyplora import (
    HypLoRAConfig,
    adapter_parameter_count,
    apply_hyplora,
    apply_lora,
    trainable_parameter_count,
)
from moescope.geometry.curved.hyperbolicity import matched_gaussian, relative_delta
from moescope.lab.corpus import math_documents
from moescope.lab.model import IGNORE_INDEX, LMConfig, TinyLM
from moescope.lab.train import deterministic

PROFILES = ("quick", "full")
METHODS = ("hyplora", "lora")
_THREADS = 1  # one thread: one reduction order (as the lab trains), and no stalls when the cores are shared


@dataclass(frozen=True)
class HypLoRAProfile:
    """One scale of the experiment. The tiny pre-train is used only when no ``base`` run is given."""

    name: str
    seeds: int                      # paired fine-tuning seeds: seed, seed + 1, ...
    pretrain_steps: int             # tiny char-level LM on the lab corpus's math domain
    pretrain_chars: int             # characters of that domain generated for it
    d_model: int
    n_layer: int
    seq_len: int
    finetune_steps: int
    batch_size: int
    lr: float                       # AdamW on the adapters (the same for both methods)
    eval_problems: int              # per held-out set
    max_operand: int = 9            # single digits: learnable by a tiny LM in seconds; hard = longer chains
    train_ops: tuple[int, ...] = (1, 2)   # operations per fine-tuning chain
    hard_ops: int = 3               # the held-out harder chains: one step more
    delta_points: int = 64          # points per δ measurement (exact all-quadruple δ is O(n⁴))
    delta_draws: int = 5            # Gaussian clouds (and point subsamples) per δ comparison
    # attention's two projections: every lab LM has them as nn.Linear (an MoE base's experts are not)
    adapter: HypLoRAConfig = field(default_factory=HypLoRAConfig)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["adapter"]["target_modules"] = list(self.adapter.target_modules)
        d["train_ops"] = list(self.train_ops)
        return d


def hyplora_profile(name: str = "quick") -> HypLoRAProfile:
    """The ``quick`` (CI, a few seconds) or ``full`` profile."""
    if name == "quick":
        return HypLoRAProfile(name="quick", seeds=3, pretrain_steps=150, pretrain_chars=40_000, d_model=32,
                              n_layer=2, seq_len=64, finetune_steps=100, batch_size=32, lr=1e-2,
                              eval_problems=128, delta_points=48, delta_draws=4)
    if name == "full":
        return HypLoRAProfile(name="full", seeds=5, pretrain_steps=1500, pretrain_chars=300_000, d_model=64,
                              n_layer=2, seq_len=64, finetune_steps=600, batch_size=32, lr=5e-3,
                              eval_problems=256, delta_points=96, delta_draws=8)
    raise ValueError(f"profile must be one of {PROFILES}; got {name!r}")


# -- the task ------------------------------------------------------------------------------------
def chain_problem(rng: random.Random, ops: int, max_operand: int) -> tuple[str, str, int]:
    """(prompt, completion, answer) of a chain of ``ops`` additions/subtractions, reduced left to right.

    ``12 + 7 - 3 =`` → `` 19 - 3 = 16`` + newline, answer 16: each step is one line of the lab
    corpus (``a + b = c``), so a chain of k operations is k such steps written in a row.
    """
    vals = [rng.randint(0, max_operand) for _ in range(ops + 1)]
    signs = [rng.choice("+-") for _ in range(ops)]
    terms = [str(vals[0])] + [f"{s} {v}" for s, v in zip(signs, vals[1:], strict=True)]
    prompt = " ".join(terms) + " ="
    acc, steps = vals[0], []
    for i, (s, v) in enumerate(zip(signs, vals[1:], strict=True)):
        acc = acc + v if s == "+" else acc - v
        steps.append(" ".join([str(acc), *terms[i + 2:]]))
    return prompt, " " + " = ".join(steps) + "\n", acc


class CharCodec:
    """Character-level tokenizer over a fixed alphabet (the tiny pre-train's)."""

    def __init__(self, text: str) -> None:
        self.chars = sorted(set(text) | set("0123456789+-= \n"))
        self.index = {ch: i for i, ch in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        return [self.index[ch] for ch in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)


class BPECodec:
    """The lab's byte-level BPE (``tokenizer.json`` beside a trained run)."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(path))

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)


@dataclass(frozen=True)
class Problems:
    """Encoded problems: ``prompts`` and ``completions`` token lists, ``answers`` as strings."""

    prompts: list[list[int]]
    completions: list[list[int]]
    answers: list[str]


def encode_problems(codec, items: list[tuple[str, str, int]]) -> Problems:
    """Prompt and completion encoded separately (both begin at a word boundary), prompt after a newline."""
    return Problems([codec.encode("\n" + p) for p, _, _ in items], [codec.encode(c) for _, c, _ in items],
                    [str(a) for _, _, a in items])


def teacher_batch(probs: Problems, idx: list[int], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) (B, T): prompt + completion right-padded; targets only on completion tokens."""
    seqs = [probs.prompts[i] + probs.completions[i] for i in idx]
    T = max(len(s) for s in seqs) - 1
    x = torch.full((len(idx), T), pad, dtype=torch.int64)
    y = torch.full((len(idx), T), IGNORE_INDEX, dtype=torch.int64)
    for row, (i, s) in enumerate(zip(idx, seqs, strict=True)):
        x[row, : len(s) - 1] = torch.tensor(s[:-1])
        start = len(probs.prompts[i]) - 1                       # the position that predicts the first answer token
        y[row, start: len(s) - 1] = torch.tensor(s[len(probs.prompts[i]):])
    return x, y


def _answer_loss(model: TinyLM, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return model(x, targets=y).loss


@torch.no_grad()
def evaluate(model: TinyLM, probs: Problems, *, pad: int, batch: int = 256) -> dict:
    """Answer-token loss and exact-answer accuracy over ``probs``, from one teacher-forced pass.

    ``answer_loss``: mean cross entropy per completion token. ``accuracy``: the share of problems
    whose completion (every step of the chain, the answer and the closing newline) is the argmax at
    every position given the reference prefix — exactly the problems that greedy decoding solves
    word for word (:func:`greedy_completions`; the tests check the two agree).
    """
    model.eval()
    n = len(probs.prompts)
    total, count, correct = 0.0, 0, 0
    for lo in range(0, n, batch):
        x, y = teacher_batch(probs, list(range(lo, min(n, lo + batch))), pad)
        logits = model(x).logits.float()                                          # (B, T, V)
        mask = y != IGNORE_INDEX
        total += float(F.cross_entropy(logits[mask], y[mask], reduction="sum"))
        count += int(mask.sum())
        right = (logits.argmax(-1) == y) | ~mask                                  # (B, T)
        correct += int(right.all(dim=1).sum())
    return {"answer_loss": total / count, "accuracy": correct / n}


@torch.no_grad()
def greedy_completions(model: TinyLM, codec, probs: Problems, idx: list[int], pad: int) -> list[str]:
    """Greedy completions of the prompts ``idx`` (each as long as its reference completion), decoded.

    Prompts are right-padded in one buffer; each row's next token is read at its own end and
    written after it. Attention is causal, so what lies to the right of a row's end never matters.
    """
    model.eval()
    lens = torch.tensor([len(probs.prompts[i]) for i in idx])
    want = torch.tensor([len(probs.completions[i]) for i in idx])
    buf = torch.full((len(idx), int((lens + want).max())), pad, dtype=torch.int64)
    for row, i in enumerate(idx):
        buf[row, : lens[row]] = torch.tensor(probs.prompts[i])
    rows, end = torch.arange(len(idx)), lens.clone()
    for _ in range(int(want.max())):
        logits = model(buf[:, : int(end.max())]).logits                           # (B, t, V)
        live = end < lens + want
        buf[rows[live], end[live]] = logits[rows[live], end[live] - 1].argmax(-1)
        end = end + live.long()
    return [codec.decode(buf[row, lens[row]: end[row]].tolist()) for row in range(len(idx))]


# -- models --------------------------------------------------------------------------------------
def pretrain_tiny(p: HypLoRAProfile, seed: int) -> tuple[TinyLM, CharCodec]:
    """A dense char-level TinyLM pre-trained on the lab corpus's math domain (causal LM, AdamW)."""
    text = "\n".join(d.text for d in math_documents(p.pretrain_chars, 4_000, seed))
    codec = CharCodec(text)
    stream = torch.tensor(codec.encode(text), dtype=torch.int64)
    cfg = LMConfig(vocab_size=codec.vocab_size, d_model=p.d_model, n_layer=p.n_layer, n_head=4, seq_len=p.seq_len,
                   ffn="dense", dense_intermediate=2 * p.d_model)
    torch.manual_seed(seed)
    model = TinyLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    for step in range(p.pretrain_steps):
        for g in opt.param_groups:                                                # cosine to 10%
            g["lr"] = 3e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / p.pretrain_steps)))
        off = torch.randint(0, stream.numel() - p.seq_len - 1, (p.batch_size,), generator=gen)
        win = torch.stack([stream[o: o + p.seq_len + 1] for o in off.tolist()])    # (B, T + 1)
        loss = model(win[:, :-1], targets=win[:, 1:]).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval(), codec


def load_base(base: str | Path) -> tuple[TinyLM, BPECodec, str]:
    """A trained lab run: its newest verified checkpoint's model, the tokenizer found in or above it."""
    from moescope.lab import checkpoint as ckpt
    from moescope.lab.train import load_model

    path = Path(base)
    if (path / ckpt.MODEL_FILE).exists():
        chosen = path
    elif (path / "checkpoints").is_dir() and (found := ckpt.latest_checkpoint(path / "checkpoints")) is not None:
        chosen = found[0]
    else:
        raise ValueError(f"base must be a lab checkpoint directory (with {ckpt.MODEL_FILE}) or a run directory "
                         f"holding checkpoints/; got {str(base)!r}")
    for folder in (chosen, *chosen.parents[:5]):
        if (folder / "tokenizer.json").exists():
            return load_model(chosen), BPECodec(folder / "tokenizer.json"), str(chosen)
    raise ValueError(f"no tokenizer.json in {chosen} or the five folders above it; the lab writes it beside its runs")


# -- fine-tuning ---------------------------------------------------------------------------------
APPLY: dict[str, Callable] = {"hyplora": apply_hyplora, "lora": apply_lora}


def finetune(base: TinyLM, method: str, cfg: HypLoRAConfig, train: Problems, p: HypLoRAProfile, seed: int,
             pad: int) -> tuple[TinyLM, list[float]]:
    """A copy of ``base`` with ``method``'s adapters, trained on ``train``; returns it and its loss curve."""
    model = copy.deepcopy(base)
    APPLY[method](model, cfg, generator=torch.Generator().manual_seed(seed))
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=p.lr, weight_decay=0.0)
    order = torch.Generator().manual_seed(seed)
    curve = []
    model.train()
    for step in range(p.finetune_steps):
        for g in opt.param_groups:
            g["lr"] = p.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / p.finetune_steps)))
        idx = torch.randint(0, len(train.prompts), (p.batch_size,), generator=order).tolist()
        loss = _answer_loss(model, *teacher_batch(train, idx, pad))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        curve.append(float(loss.detach()))
    return model.eval(), curve


# -- δ-hyperbolicity -----------------------------------------------------------------------------
def delta_comparison(points: np.ndarray, p: HypLoRAProfile, seed: int) -> dict:
    """Relative δ of ``points`` (subsampled to ``delta_points`` per draw) vs matched Gaussian clouds."""
    rng = np.random.default_rng(seed)
    observed, gaussian = [], []
    for _ in range(p.delta_draws):
        take = points if len(points) <= p.delta_points else points[rng.choice(len(points), p.delta_points,
                                                                               replace=False)]
        observed.append(relative_delta(take).relative)
        gaussian.append(relative_delta(matched_gaussian(take, rng)).relative)
    return {"relative": observed, "gaussian": gaussian, "points": int(min(len(points), p.delta_points)),
            "available": len(points), "dim": int(points.shape[1])}


@torch.no_grad()
def hidden_states(model: TinyLM, probs: Problems, pad: int) -> np.ndarray:
    """The final hidden states (after ``ln_f``) at every real token of ``probs``, (N, d)."""
    seen: list[torch.Tensor] = []
    hook = model.ln_f.register_forward_hook(lambda mod, args, out: seen.append(out.detach()))
    try:
        x, _ = teacher_batch(probs, list(range(len(probs.prompts))), pad)
        model(x)
    finally:
        hook.remove()
    lengths = [len(a) + len(b) - 1 for a, b in zip(probs.prompts, probs.completions, strict=True)]
    return torch.cat([seen[0][i, :n] for i, n in enumerate(lengths)]).double().numpy()


# -- the experiment ------------------------------------------------------------------------------
def _problem_sets(p: HypLoRAProfile, seed: int) -> dict[str, list[tuple[str, str, int]]]:
    rng = random.Random(f"hyplora-task-{seed}")
    train = [chain_problem(rng, rng.choice(p.train_ops), p.max_operand) for _ in range(4_000)]
    seen = {q for q, _, _ in train}
    fresh = []
    while len(fresh) < p.eval_problems:                     # in-distribution, but not a training prompt
        item = chain_problem(rng, rng.choice(p.train_ops), p.max_operand)
        if item[0] not in seen:
            fresh.append(item)
    hard = [chain_problem(rng, p.hard_ops, p.max_operand) for _ in range(p.eval_problems)]
    return {"train": train, "easy": fresh, "hard": hard}


def run_hyplora(profile: str = "quick", seed: int = 0, base: str | Path | None = None) -> dict:
    """Fine-tune with HypLoRA and with LoRA over paired seeds; held-out loss/accuracy; δ of the embeddings.

    ``base``: a trained lab run (see the module docstring); None pre-trains a tiny LM here.
    Returns a JSON-ready dict (see :mod:`moescope.report.hyplora_figures` and claim 19 for its readers).
    """
    p = hyplora_profile(profile)
    with deterministic(_THREADS), torch.random.fork_rng(devices=[]):
        if base is None:
            model, codec = pretrain_tiny(p, seed)
            base_kind, base_path = "tiny dense char-level LM pre-trained here on the lab corpus's math domain", None
            cfg = p.adapter
        else:
            model, codec, base_path = load_base(base)
            base_kind = f"the lab's trained run ({model.cfg.router}, d_model {model.cfg.d_model})"
            cfg = p.adapter
        for q in model.parameters():
            q.requires_grad_(False)
        pad = codec.encode("\n")[0]
        raw = _problem_sets(p, seed)
        sets = {k: encode_problems(codec, v) for k, v in raw.items()}
        longest = max(len(a) + len(b) for k in ("train", "easy", "hard")
                      for a, b in zip(sets[k].prompts, sets[k].completions, strict=True))
        if longest > model.cfg.seq_len:
            raise ValueError(f"the hard problems need {longest} tokens but the base model's seq_len is "
                             f"{model.cfg.seq_len}; lower hard_ops or max_operand")
        base_metrics = {k: evaluate(model, sets[k], pad=pad) for k in ("easy", "hard")}
        seeds = [seed + i for i in range(p.seeds)]
        runs: dict[str, list[dict]] = {m: [] for m in METHODS}
        counts, examples = {}, {"prompts": [raw["hard"][i][0] for i in range(3)],
                                "reference": [raw["hard"][i][1].rstrip("\n") for i in range(3)],
                                "base": greedy_completions(model, codec, sets["hard"], [0, 1, 2], pad)}
        for s in seeds:
            for method in METHODS:
                tuned, curve = finetune(model, method, cfg, sets["train"], p, s, pad)
                counts[method] = trainable_parameter_count(tuned)
                if s == seeds[0]:
                    examples[method] = greedy_completions(tuned, codec, sets["hard"], [0, 1, 2], pad)
                metrics = {k: evaluate(tuned, sets[k], pad=pad) for k in ("easy", "hard")}
                runs[method].append({"seed": s, "hard_loss": metrics["hard"]["answer_loss"],
                                     "hard_accuracy": metrics["hard"]["accuracy"],
                                     "easy_loss": metrics["easy"]["answer_loss"],
                                     "easy_accuracy": metrics["easy"]["accuracy"],
                                     "curve": curve[:: max(1, len(curve) // 60)]})
        emb = model.wte.weight.detach().double().numpy()
        delta = {"embeddings": delta_comparison(emb, p, seed),
                 "hidden": delta_comparison(hidden_states(model, sets["hard"], pad), p, seed + 1)}
    examples = {k: [t.rstrip("\n") for t in v] for k, v in examples.items()}
    return {
        "profile": p.name, "seed": seed, "seeds": seeds, "base": base_path, "base_kind": base_kind,
        "settings": p.to_dict(),
        "adapter": {"rank": cfg.rank, "alpha": cfg.alpha, "curvature": cfg.curvature,
                    "target_modules": list(cfg.target_modules)},
        "task": {"train_ops": list(p.train_ops), "hard_ops": p.hard_ops, "max_operand": p.max_operand,
                 "train_problems": len(raw["train"]), "eval_problems": p.eval_problems,
                 "examples": examples},
        "params": {"hyplora": counts["hyplora"], "lora": counts["lora"],
                   "expected": adapter_parameter_count(model, cfg),
                   "base_total": sum(q.numel() for q in model.parameters())},
        "base_model": {k: v for k, v in base_metrics.items()},
        "runs": runs,
        "delta": delta,
    }
