"""``moescope bench train``: the lab LM's training step against transformers' Mixtral.

One training step — forward with the loss, backward, gradient clipping, AdamW step — of

* moescope's :class:`~moescope.lab.model.TinyLM` with a top-2-of-8 MoE FFN as the lab's
  ``quick`` profile builds it (its body, ``arch="llama"`` by default; d_model 64, 2 layers, 4 heads,
  experts of I = 128, vocabulary 2048, seq_len 64), loss = cross entropy + the lab's auxiliary
  losses (load balance α = 0.01, router z-loss 1e-3), exactly as :func:`moescope.lab.train.train_run` trains it;
* transformers' ``MixtralForCausalLM`` built from a ``MixtralConfig`` of the same shape (hidden
  64, 2 layers, 4 heads, 8 experts top-2, intermediate 128, vocabulary 2048, tied embeddings,
  SDPA attention), loss = its cross entropy + its load-balancing loss (``output_router_logits``,
  ``router_aux_loss_coef`` = 0.01), once per experts implementation transformers offers here
  (``eager``: a loop over the experts hit; ``grouped_mm``; one that fails is skipped with the
  reason);
* the same TinyLM (same initial weights) with its forward and loss under
  ``torch.autocast("cpu", dtype=torch.bfloat16)`` — the lab's ``--dtype`` question: the
  parameters, gradients and AdamW state stay float32, the GEMMs run in bfloat16 (AMX where
  the CPU has it). At the lab's shapes the matrices are small, so the casts may cost more than
  the faster GEMMs save; this row says which.

Both use :func:`moescope.lab.train.make_optimizer` (the lab's AdamW) and the lab's
:func:`~moescope.lab.train.deterministic` settings (one thread by default, as each lab run
trains), on the same random batches of ``batch_size`` × ``seq_len`` tokens. The implementations run in
interleaved rounds — each round times ``steps_per_round`` steps of each, in an order that
rotates from round to round — so load from other processes slows them alike; the table shows
the median (and best) milliseconds per step and moescope's median over each transformers
median. With the llama body the two compute the same forward (the lab's export test holds their logits
equal); the steps differ only in the losses (Mixtral: no z-loss, loss over T−1 shifted positions) and the
code that runs them. With ``--arch nanogpt`` TinyLM has LayerNorm and learned positions instead; the
parameter counts are printed alongside. A benchmark, not a test: nothing here asserts a time.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from moescope.lab.model import LMConfig, TinyLM, total_params
from moescope.lab.runs import profile
from moescope.lab.train import TrainConfig, deterministic, make_optimizer, training_loss

MOESCOPE = "moescope TinyLM"
AUTOCAST = "moescope TinyLM (bfloat16 autocast)"
QUICK_LM = profile("quick").lm  # the quick profile's baseline, in the lab's body
HF_IMPLEMENTATIONS = ("eager", "grouped_mm")  # transformers' experts implementations tried, in this order


@dataclass(frozen=True)
class TrainBenchConfig:
    """What ``moescope bench train`` times. Defaults: the lab's quick shape and recipe."""

    lm: LMConfig = QUICK_LM    # the quick profile's baseline (a frozen value: safe as a default)
    batch_size: int = 16       # the quick profile's batch
    rounds: int = 9            # interleaved rounds (odd: a true median); ~13 s in all at the defaults
    steps_per_round: int = 5   # timed steps of each implementation per round
    warmup_steps: int = 3      # untimed steps of each before the first round (allocator, lazy init)
    threads: int = 1           # the lab trains each run on one thread
    seed: int = 0              # weights of both models and the token batches

    def __post_init__(self) -> None:
        for name in ("batch_size", "rounds", "steps_per_round", "threads"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer; got {name}={v!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be a non-negative integer; got {self.warmup_steps!r}")
        if self.lm.ffn != "moe" or self.lm.moe.router != "topk" or self.lm.moe.shared_experts or self.lm.bidirectional:
            raise ValueError("the benchmark compares a causal top-k MoE without shared experts (Mixtral's kind); "
                             f"got ffn={self.lm.ffn!r}, router={self.lm.router!r}, "
                             f"shared_experts={self.lm.moe.shared_experts}, bidirectional={self.lm.bidirectional}")


def mixtral_config(lm: LMConfig, *, aux_coef: float = 0.01):
    """The ``MixtralConfig`` of ``lm``'s shape (tied embeddings, SDPA, the balance loss on)."""
    from transformers import MixtralConfig

    return MixtralConfig(vocab_size=lm.vocab_size, hidden_size=lm.d_model, intermediate_size=lm.moe.expert_intermediate,
                         num_hidden_layers=lm.n_layer, num_attention_heads=lm.n_head, num_key_value_heads=lm.n_head,
                         num_local_experts=lm.moe.num_experts, num_experts_per_tok=lm.moe.top_k,
                         max_position_embeddings=lm.seq_len, tie_word_embeddings=True, output_router_logits=True,
                         router_aux_loss_coef=aux_coef, attn_implementation="sdpa")


def bench_train(cfg: TrainBenchConfig = TrainBenchConfig(), *,
                on_round: Callable[[int], None] | None = None) -> dict:
    """Time both training steps (see the module docstring); returns machine, shape and rows.

    Each row: ``name``, ``median_ms`` and ``best_ms`` per step, ``params`` (total),
    ``ratio`` = moescope's median / this row's median (1 for moescope), ``skipped`` (the reason,
    for an implementation that failed; its times are then None). ``on_round(i)`` after each round.
    """
    from transformers import MixtralForCausalLM

    train = TrainConfig(batch_size=cfg.batch_size)  # the lab's recipe (lr, betas, decay, clip, aux)
    steps: dict[str, Callable[[Tensor], None]] = {}
    params: dict[str, int] = {}
    skipped: dict[str, str] = {}
    with deterministic(cfg.threads):
        torch.manual_seed(cfg.seed)
        lm = TinyLM(cfg.lm).train()
        steps[MOESCOPE] = _step(lm, make_optimizer(lm, train), train,
                                lambda w: training_loss(lm(w[:, :-1], targets=w[:, 1:]), train.aux))
        params[MOESCOPE] = sum(p.numel() for p in lm.parameters())
        torch.manual_seed(cfg.seed)
        half = TinyLM(cfg.lm).train()

        def autocast_loss(w: Tensor) -> Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return training_loss(half(w[:, :-1], targets=w[:, 1:]), train.aux)

        steps[AUTOCAST] = _step(half, make_optimizer(half, train), train, autocast_loss)
        params[AUTOCAST] = params[MOESCOPE]
        for impl in HF_IMPLEMENTATIONS:
            name = f"transformers Mixtral ({impl})"
            torch.manual_seed(cfg.seed)
            config = mixtral_config(cfg.lm, aux_coef=train.aux["load_balance"])
            config._experts_implementation = impl
            hf = MixtralForCausalLM(config).float().train()
            ids = _windows(cfg, torch.Generator().manual_seed(cfg.seed))
            steps[name] = _step(hf, make_optimizer(hf, train), train,
                                lambda w, hf=hf: hf(input_ids=w[:, :-1], labels=w[:, :-1]).loss)
            params[name] = sum(p.numel() for p in hf.parameters())
            try:
                steps[name](ids)  # fail here, not mid-round
            except Exception as err:  # any failure of an optional implementation is reported, not raised
                skipped[name] = f"{type(err).__name__}: {err}"[:200]
                del steps[name]
        gen = torch.Generator().manual_seed(cfg.seed)
        for step in steps.values():
            for _ in range(cfg.warmup_steps):
                step(_windows(cfg, gen))
        samples: dict[str, list[float]] = {name: [] for name in steps}
        names = list(steps)
        for r in range(cfg.rounds):
            order = names[r % len(names):] + names[: r % len(names)]   # rotate: no implementation always first
            for name in order:
                for _ in range(cfg.steps_per_round):
                    w = _windows(cfg, gen)
                    t0 = time.perf_counter()
                    steps[name](w)
                    samples[name].append(time.perf_counter() - t0)
            if on_round is not None:
                on_round(r)
    ours = statistics.median(samples[MOESCOPE])
    rows = []
    for name in [MOESCOPE, AUTOCAST, *(f"transformers Mixtral ({i})" for i in HF_IMPLEMENTATIONS)]:
        if name in samples:
            med = statistics.median(samples[name])
            rows.append({"name": name, "median_ms": 1e3 * med, "best_ms": 1e3 * min(samples[name]),
                         "params": params[name], "ratio": ours / med, "skipped": None})
        else:
            rows.append({"name": name, "median_ms": None, "best_ms": None, "params": params.get(name),
                         "ratio": None, "skipped": skipped.get(name, "not run")})
    return {"machine": _machine(cfg.threads), "config": _config_dict(cfg), "rows": rows}


def _windows(cfg: TrainBenchConfig, gen: torch.Generator) -> Tensor:
    """(B, T+1) random token windows: TinyLM reads x = w[:, :-1], y = w[:, 1:]."""
    return torch.randint(0, cfg.lm.vocab_size, (cfg.batch_size, cfg.lm.seq_len + 1), generator=gen)


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, train: TrainConfig,
          loss_of: Callable[[Tensor], Tensor]) -> Callable[[Tensor], None]:
    """One optimiser step as the lab's ``train_step`` takes it: loss, backward, clip, AdamW."""
    def step(w: Tensor) -> None:
        loss = loss_of(w)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
        optimizer.step()
    return step


def _config_dict(cfg: TrainBenchConfig) -> dict:
    d = asdict(cfg)
    d["lm"] = cfg.lm.to_dict()
    d["tokens_per_step"] = cfg.batch_size * cfg.lm.seq_len
    d["tinylm_params"] = total_params(cfg.lm)
    return d


def _machine(threads: int) -> dict:
    import transformers

    from moescope.moe.benchmark import cpu_name

    return {"cpu": cpu_name(), "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "threads": threads}


def train_table(result: dict):
    """A rich table of :func:`bench_train`'s rows (ms per step, parameters, ratio to moescope)."""
    from rich.table import Table

    c = result["config"]
    lm, moe = c["lm"], c["lm"]["moe"]
    table = Table(title=f"Training step (forward + backward + clip + AdamW), batch {c['batch_size']} × "
                        f"{lm['seq_len']} tokens, d_model {lm['d_model']}, {lm['n_layer']} layers, "
                        f"{moe['num_experts']} experts top-{moe['top_k']} of I={moe['expert_intermediate']},"
                        f" vocab {lm['vocab_size']}; {c['rounds']} rounds × {c['steps_per_round']} steps, "
                        f"{result['machine']['threads']} thread(s)")
    for col in ("implementation", "median ms/step", "best ms/step", "parameters", "moescope / this"):
        table.add_column(col, justify="left" if col == "implementation" else "right")
    for row in result["rows"]:
        if row["skipped"]:
            table.add_row(row["name"], "skipped", "", "", row["skipped"][:60])
            continue
        table.add_row(row["name"], f"{row['median_ms']:.1f}", f"{row['best_ms']:.1f}", f"{row['params']:,}",
                      f"{row['ratio']:.2f}")
    return table


def machine_line(result: dict) -> str:
    m = result["machine"]
    return (f"CPU: {m['cpu']}; torch {m['torch']}, transformers {m['transformers']}, python {m['python']}; "
            f"{m['threads']} thread(s)")
