"""The lab's training loop: plain, deterministic, resumable.

``train_run(spec, tokens, out_dir)`` trains one :class:`RunSpec` in ``out_dir/<name>/``:
AdamW (decay on matrices only), linear warmup then cosine decay to ``min_lr`` (nanoGPT's
``get_lr``), gradient clipping, the routers' auxiliary losses added with the coefficients of
:attr:`TrainConfig.aux`, and DeepSeek-V3's bias update after every optimiser step. Batches are
random windows of the training token stream drawn from a seeded ``torch.Generator``. Masked-token
runs apply the output head only at the masked positions (``TinyLM(..., logits_at_targets=True)``:
the same loss, about half the step, since the tied head is most of a tiny LM's arithmetic).

Determinism and resume. A run fixes the thread count (``torch.set_num_threads``, default 1:
with one thread every reduction has one order) and turns on
``torch.use_deterministic_algorithms(True)`` for its duration (both restored afterwards). Every
source of state — weights and buffers, AdamW moments, the step, the torch/Python/sampler RNG
states — is in the checkpoint, and the learning rate is a function of the step alone. Calling
``train_run`` again after an interruption (an exception, ``kill -9`` mid-step or mid-write)
resumes from the newest complete checkpoint, cuts the metrics log back to that step, and then
performs exactly the steps an uninterrupted run would have: the final weights are equal
(``torch.equal``) and the log's records are equal except their wall-clock ``time``.
Checkpoints are written every ``checkpoint_every`` steps; those at ``keep_fractions`` of the
run (step 0 = the initialisation included) stay, the others are deleted once a newer one is
committed. Re-running a finished run only re-evaluates the final checkpoint.

Data parallelism. When torch.distributed is initialised with W > 1 ranks (``torchrun
--nproc_per_node W``; see :func:`moescope.lab.data_parallel.distributed`), ``train_run`` trains with
``DistributedDataParallel`` (gloo on CPU, NCCL with the ranks' CUDA devices) and reproduces
the single-process run to floating-point rounding:

* every rank draws the whole global batch of ``batch_size`` windows from the same seeded
  sampler (offsets and masks cost nothing next to a step) and keeps rows
  ``[r·B/W, (r+1)·B/W)``, so the ranks' shards concatenate to the one-process batch and the
  sampler state stays the same on every rank (checkpoints are interchangeable with W = 1);
* the routers' balance statistics (f_i, P_i, the z-loss and the DeepSeek-V3 sequence loss)
  are all-reduced inside the loss (:func:`moescope.moe.losses.global_token_sums`), the cross
  entropy is weighted so that DDP's gradient average is the gradient of the global mean,
  and DeepSeek-V3's bias update reads the all-reduced token counts, so every rank's bias stays
  identical;
* the logged loss, auxiliary losses and load CV are the global batch's, and evaluation splits
  its batches over the ranks and all-reduces the sums;
* rank 0 alone writes checkpoints, the log and ``result.json``; on resume every rank loads the
  checkpoint rank 0 chose (the output directory must be one all ranks see).

Expert Choice picks tokens among the tokens of the batch it is given, here each rank's shard,
so that run (and only it) differs from the one-process run under data parallelism.
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

from moescope._files import write_json_atomic
from moescope.lab import checkpoint as ckpt
from moescope.lab.corpus import DOMAINS
from moescope.lab.data_parallel import DataParallel, all_ranks_ok, data_parallel_world, from_lead, rank_device, wrap_ddp
from moescope.lab.model import IGNORE_INDEX, LMConfig, TinyLM, active_params_per_token, mask_tokens, total_params
from moescope.lab.tensorboard import CurveWriter
from moescope.lab.tensorboard import require as require_tensorboard
from moescope.lab.tokenizer import CorpusTokens
from moescope.moe import DeepSeekV3Router
from moescope.moe.losses import global_token_sums

OBJECTIVES = ("causal", "masked")
AUX_LOSSES = ("load_balance", "z_loss", "seq_balance")  # the names moescope routers report
AUTOCASTS = (None, "bfloat16")  # TrainConfig.autocast: float32 throughout, or the forward under bfloat16 autocast
LOG_FILE, RESULT_FILE, CHECKPOINT_DIR = "metrics.jsonl", "result.json", "checkpoints"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class TrainConfig:
    """How one run trains. Defaults: the lab's ``quick`` scale."""

    steps: int = 200              # ~1 epoch of the quick corpus (~197k tokens) at batch 16 × 64 tokens
    batch_size: int = 16
    lr: float = 3e-3              # tiny models take a large peak rate (nanoGPT's shakespeare-char: 1e-3)
    min_lr: float = 3e-4          # cosine floor = lr / 10 (Chinchilla)
    warmup_steps: int = 20
    weight_decay: float = 0.1     # on matrices and expert banks only (nanoGPT)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    # Auxiliary-loss coefficients by RouterResult.aux_losses name: α = 0.01 (Switch Transformers),
    # β = 1e-3 (ST-MoE's router z-loss), DeepSeek-V3's sequence-wise loss off (its α is ~1e-4).
    aux: dict[str, float] = field(default_factory=lambda: {"load_balance": 0.01, "z_loss": 1e-3,
                                                           "seq_balance": 0.0})
    mask_rate: float = 0.15       # masked-token objective: BERT's 15%
    seed: int = 0                 # model init, batch order, masks
    checkpoint_every: int = 50    # resume granularity; a quarter of 200 steps, so resume points are kept ones
    keep_fractions: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)  # checkpoints kept for dynamics
    eval_windows: int = 32        # validation windows per domain (of seq_len tokens)
    num_threads: int = 1          # torch threads during the run (determinism; see the module docstring)
    # None: float32 throughout. "bfloat16": each step's forward and loss under torch.autocast (the GEMMs in
    # bfloat16, AMX where the CPU has it); parameters, gradients and AdamW's state stay float32, and the
    # evaluation and every measurement after training run in float32.
    autocast: str | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every", "eval_windows", "num_threads"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer; got {name}={v!r}")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"warmup_steps must be in [0, steps={self.steps}); got {self.warmup_steps!r}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"need 0 <= min_lr <= lr; got min_lr={self.min_lr!r}, lr={self.lr!r}")
        if not 0 < self.mask_rate < 1:
            raise ValueError(f"mask_rate must be in (0, 1); got {self.mask_rate!r}")
        if any(not 0 <= f <= 1 for f in self.keep_fractions):
            raise ValueError(f"keep_fractions must lie in [0, 1]; got {self.keep_fractions!r}")
        unknown = set(self.aux) - set(AUX_LOSSES)
        if unknown:
            raise ValueError(f"unknown auxiliary losses {sorted(unknown)}; known: {', '.join(AUX_LOSSES)}")
        if any(v < 0 for v in self.aux.values()):
            raise ValueError(f"aux coefficients must be >= 0; got {self.aux!r}")
        if self.autocast not in AUTOCASTS:
            raise ValueError(f"autocast must be None (float32) or 'bfloat16'; got autocast={self.autocast!r}")

    def autocasting(self):
        """The context a training step's forward and loss run in: ``torch.autocast`` to ``autocast``, or none."""
        return nullcontext() if self.autocast is None else torch.autocast("cpu", dtype=getattr(torch, self.autocast))

    def lr_at(self, step: int) -> float:
        """Learning rate of optimiser step ``step`` (0-based): linear warmup, cosine to min_lr."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / (self.warmup_steps + 1)
        ratio = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        return self.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (self.lr - self.min_lr)

    def kept_steps(self) -> set[int]:
        return {round(f * self.steps) for f in self.keep_fractions} | {self.steps}


@dataclass(frozen=True)
class RunSpec:
    """One training run. ``objective`` decides what it may be compared with.

    ``causal``: next-token prediction with a causal LM (dense or a causal router);
    ``masked``: masked-token prediction with a bidirectional LM — the only objective on which
    Soft MoE and Expert Choice (not causal) are trained. Runs are comparable only within one
    :attr:`comparable_group`.
    """

    name: str
    lm: LMConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    objective: str = "causal"
    knob: str = ""  # what this run changes with respect to its group's baseline (for reports)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(f"name must be a file-name-safe identifier ([A-Za-z0-9_.-]); got {self.name!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}; got {self.objective!r}")
        if self.objective == "causal" and not self.lm.causal:
            raise ValueError(f"run {self.name!r}: the causal objective needs a causal LM, but router "
                             f"{self.lm.router!r} / bidirectional={self.lm.bidirectional} lets positions see "
                             "later tokens; use objective='masked' with bidirectional=True")
        if self.objective == "masked" and not self.lm.bidirectional:
            raise ValueError(f"run {self.name!r}: the masked objective needs bidirectional=True")

    @property
    def comparable_group(self) -> str:
        """``causal`` or ``masked``: losses of runs in different groups are not comparable."""
        return self.objective

    def to_dict(self) -> dict:
        """Plain JSON values; a float32 run writes no ``autocast``, so its config reads as before the option."""
        train = asdict(self.train)
        if train["autocast"] is None:
            del train["autocast"]
        return {"name": self.name, "lm": self.lm.to_dict(), "train": train, "objective": self.objective,
                "comparable_group": self.comparable_group, "knob": self.knob}

    @classmethod
    def from_dict(cls, d: dict) -> RunSpec:
        """Inverse of :meth:`to_dict` (JSON lists become the config's tuples again)."""
        train = dict(d["train"])
        train.update(betas=tuple(train["betas"]), keep_fractions=tuple(train["keep_fractions"]))
        return cls(name=d["name"], lm=LMConfig.from_dict(d["lm"]), train=TrainConfig(**train),
                   objective=d["objective"], knob=d.get("knob", ""))


@dataclass(frozen=True)
class RunResult:
    """What a finished run produced. Losses are mean cross entropy in nats per predicted token."""

    name: str
    objective: str
    train_loss: float                       # final model, mean over domains of the loss on training windows
    val_loss: float                         # mean over domains of val_loss_by_domain (domains weigh alike)
    val_loss_by_domain: dict[str, float]
    checkpoints: dict[int, Path]            # kept checkpoint directories by step
    log_path: Path
    wall_time: float                        # seconds of training (summed over resumes) + evaluation
    cpu_time: float                         # CPU seconds of this call's process (training done now + evaluation)
    params_active: int
    params_total: int
    run_dir: Path

    @property
    def comparable_group(self) -> str:
        return self.objective

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(checkpoints={str(k): str(v) for k, v in self.checkpoints.items()}, log_path=str(self.log_path),
                 run_dir=str(self.run_dir), comparable_group=self.comparable_group)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RunResult:
        """Inverse of :meth:`to_dict` (e.g. a run's ``result.json``; extra keys are ignored)."""
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw.update(checkpoints={int(k): Path(v) for k, v in d["checkpoints"].items()}, log_path=Path(d["log_path"]),
                  run_dir=Path(d["run_dir"]))
        return cls(**kw)


# -- pieces --------------------------------------------------------------------------------------
@contextmanager
def deterministic(num_threads: int, *, warn_only: bool = False) -> Iterator[None]:
    """Fixed thread count and deterministic algorithms inside, previous settings restored after.

    ``warn_only``: warn instead of raising on an op without a deterministic implementation (on
    CUDA, where e.g. ``bincount`` and ``scatter_add_`` have none).
    """
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(num_threads)
    torch.use_deterministic_algorithms(True, warn_only=warn_only)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det, warn_only=was_warn_only)


class BatchSampler:
    """Random windows of a token stream from one seeded generator (its state is checkpointed).

    ``causal``: x = stream[o : o+T], y = stream[o+1 : o+T+1]. ``masked``: x is the window with
    ``mask_rate`` of its positions replaced by the mask token, y the originals there (-100
    elsewhere). Offsets and masks come from :attr:`generator` only.
    """

    def __init__(self, stream: Tensor, *, seq_len: int, batch_size: int, objective: str, mask_id: int,
                 mask_rate: float, seed: int) -> None:
        if stream.numel() < seq_len + 2:
            raise ValueError(f"the token stream has {stream.numel()} tokens; need more than seq_len + 1 = "
                             f"{seq_len + 1} (a larger corpus or a shorter seq_len)")
        self.stream, self.T, self.B = stream, seq_len, batch_size
        self.objective, self.mask_id, self.mask_rate = objective, mask_id, mask_rate
        self.generator = torch.Generator().manual_seed(seed)

    def next(self) -> tuple[Tensor, Tensor]:
        """(x, y), each (B, T) int64."""
        offsets = torch.randint(0, self.stream.numel() - self.T, (self.B,), generator=self.generator)
        rows = offsets.unsqueeze(1) + torch.arange(self.T + 1)                 # (B, T+1)
        window = self.stream[rows]
        if self.objective == "causal":
            return window[:, :-1], window[:, 1:]
        return mask_tokens(window[:, :-1], mask_id=self.mask_id, rate=self.mask_rate, generator=self.generator)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on >= 2-D parameters (matrices, expert banks), none on the rest.

    The fused kernel: one pass per parameter, elementwise, so as deterministic as the
    per-parameter loop and cheaper on the lab's many small tensors.
    """
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=True)


def training_loss(out, coefficients: dict[str, float]) -> Tensor:
    """Cross entropy + Σ coefficient · aux loss (the names the model reports; others ignored)."""
    total = out.loss
    for name, coef in coefficients.items():
        if coef and name in out.aux_losses:
            total = total + coef * out.aux_losses[name]
    return total


def load_cv(tokens_per_expert: Tensor) -> float:
    """Coefficient of variation std/mean of the per-expert load (0 = perfectly even)."""
    t = tokens_per_expert.double()
    return float(t.std(unbiased=False) / t.mean()) if t.sum() > 0 else 0.0


def _windows(stream: Tensor, length: int, count: int) -> Tensor:
    """Up to ``count`` non-overlapping windows of ``length`` tokens spread evenly over ``stream``."""
    n = stream.numel() // length
    if n == 0:
        raise ValueError(f"a stream of {stream.numel()} tokens holds no window of {length}")
    picks = torch.linspace(0, n - 1, min(n, count)).round().long().unique()
    return stream[: n * length].view(n, length)[picks]                         # (W, length)


@torch.no_grad()
def evaluate(model: TinyLM, stream: Tensor, *, objective: str, mask_id: int, mask_rate: float, windows: int,
             batch_size: int, data_parallel: bool = False) -> float:
    """Mean cross entropy per predicted token over fixed windows of ``stream``.

    Windows are evenly spaced and masks come from a generator seeded 0, so every run of one
    objective and ``seq_len`` is scored on the same tokens. ``data_parallel`` (every rank of
    the default process group calls it): rank r scores batches r, r + W, ... (the same batches
    as one process; every rank draws every batch's masks) and the sums are all-reduced.
    """
    rank, world = data_parallel_world() if data_parallel else (0, 1)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    T = model.cfg.seq_len
    data = _windows(stream, T + 1, windows)
    gen = torch.Generator().manual_seed(0)
    total, count = 0.0, 0
    for b, i in enumerate(range(0, data.shape[0], batch_size)):
        w = data[i: i + batch_size]
        if objective == "causal":
            x, y = w[:, :-1], w[:, 1:]
        else:
            x, y = mask_tokens(w[:, :-1], mask_id=mask_id, rate=mask_rate, generator=gen)
        if b % world != rank:
            continue
        out = model(x.to(device), targets=y.to(device))
        n = int((y != -100).sum())
        total += float(out.loss) * n
        count += n
    model.train(was_training)
    if world > 1:
        sums = torch.tensor([total, count], dtype=torch.float64, device=device)
        dist.all_reduce(sums)
        total, count = float(sums[0]), float(sums[1])
    return total / count


def load_model(checkpoint: str | Path) -> TinyLM:
    """The model of a checkpoint directory (``.../checkpoints/step_NNNNNN``), in eval mode."""
    state = ckpt.verify_checkpoint(checkpoint)
    if state is None:
        raise ValueError(f"{checkpoint} is not a complete checkpoint (missing files or hash mismatch)")
    model = TinyLM(LMConfig.from_dict(state["config"]["run"]["lm"]))
    ckpt.load_weights(checkpoint, model)
    return model.eval()


# -- the run -------------------------------------------------------------------------------------
def _keyed_config(spec: RunSpec, tokens: CorpusTokens) -> dict:
    """The run's identity as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps({"run": spec.to_dict(), "tokens": tokens.fingerprint}, sort_keys=True))


def train_run(spec: RunSpec, corpus_tokens: CorpusTokens, out_dir: str | Path, *, progress: bool = True,
              on_step: Callable[[int, dict], None] | None = None, tensorboard: bool = False) -> RunResult:
    """Train (or resume, or re-evaluate) ``spec`` in ``out_dir/spec.name``; see the module docstring.

    Args:
        spec: the run.
        corpus_tokens: the tokenised corpus (its vocabulary must fit ``spec.lm.vocab_size``).
        out_dir: parent directory; the run writes ``<name>/checkpoints/step_*/``,
            ``<name>/metrics.jsonl`` and ``<name>/result.json``.
        progress: show a rich progress bar.
        on_step: called as ``on_step(step, record)`` after each optimiser step (and its
            checkpoint, if any); an exception it raises interrupts the run (tests use this).
        tensorboard: also write the curves as TensorBoard events in ``<name>/tensorboard/``
            (:mod:`moescope.lab.tensorboard`; needs the ``tensorboard`` package).
    """
    if tensorboard:
        require_tensorboard()  # before any work: a missing package must not cost a run
    if corpus_tokens.vocab_size > spec.lm.vocab_size:
        raise ValueError(f"the tokenizer has {corpus_tokens.vocab_size} tokens but the model's vocab_size is "
                         f"{spec.lm.vocab_size}")
    cfg, run_dir = spec.train, Path(out_dir) / spec.name
    rank, world = data_parallel_world()
    if cfg.batch_size % world:
        raise ValueError(f"run {spec.name!r}: batch_size={cfg.batch_size} does not split evenly over {world} "
                         f"data-parallel ranks; use a batch size divisible by {world} or another number of ranks")
    lead, device = rank == 0, rank_device() if world > 1 else torch.device("cpu")
    ck_dir, log_path = run_dir / CHECKPOINT_DIR, run_dir / LOG_FILE
    keyed = _keyed_config(spec, corpus_tokens)
    cpu0 = time.process_time()
    with deterministic(cfg.num_threads, warn_only=device.type != "cpu"):
        if lead:
            ckpt.clean_partial(ck_dir)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        model = TinyLM(spec.lm)
        if world > 1:
            model.to(device)
        optimizer = make_optimizer(model, cfg)
        sampler = BatchSampler(corpus_tokens.train, seq_len=spec.lm.seq_len, batch_size=cfg.batch_size,
                               objective=spec.objective, mask_id=corpus_tokens.mask_id, mask_rate=cfg.mask_rate,
                               seed=cfg.seed)
        found = ckpt.latest_checkpoint(ck_dir) if lead else None
        if world > 1:  # every rank resumes from the checkpoint rank 0 chose
            found = from_lead(found, device)
        if found is not None:
            path, state = found
            if state.get("config") != keyed:
                raise ValueError(f"{run_dir} holds checkpoints of a different run configuration or corpus; "
                                 "use another output directory or delete it")
            error = None
            try:
                ckpt.load_weights(path, model)
                ckpt.load_optimizer(path, optimizer)
            except (OSError, RuntimeError, ValueError) as err:
                error = err
            if world > 1 and not all_ranks_ok(error is None, device):
                raise RuntimeError(f"a rank could not load checkpoint {path} (rank {rank}: {error or 'loaded'}); "
                                   "every rank must see the run's output directory (a shared file system)")
            if error is not None:
                raise error
            ckpt.set_rng_state(state["rng"], sampler.generator)
            start, elapsed = state["step"], state["elapsed"]
            if lead:
                ckpt.truncate_log(log_path, start)
        else:
            start, elapsed = 0, 0.0
            if lead:
                ckpt.truncate_log(log_path, -1)
        dp = None
        if world > 1:
            dp = wrap_ddp(model, rank=rank, world=world, device=device, batch_size=cfg.batch_size)

        def save(step: int, log: ckpt.MetricsLog | None) -> None:
            if log is None:  # ranks other than 0 write nothing
                return
            log.sync()  # every record up to `step` is on disk before the checkpoint names it
            if curves is not None:
                curves.flush()
            ckpt.save_checkpoint(ck_dir, step, model, optimizer,
                                 {"config": keyed, "elapsed": elapsed + time.perf_counter() - t0,
                                  "rng": ckpt.rng_state(sampler.generator)})
            ckpt.prune(ck_dir, cfg.kept_steps(), step)

        curves = CurveWriter(run_dir, start) if tensorboard and lead else None
        try:
            t0 = time.perf_counter()
            model.train()
            with (ckpt.MetricsLog(log_path) if lead else nullcontext()) as log, \
                    _progress(progress and lead, spec.name, cfg.steps, start) as bar:
                if found is None:
                    save(0, log)
                for step in range(start, cfg.steps):
                    if dp is None:
                        record = train_step(model, optimizer, sampler, cfg, step)
                    else:
                        record = _data_parallel_step(dp, optimizer, sampler, cfg, step)
                    record["time"] = elapsed + time.perf_counter() - t0
                    if log is not None:
                        log.append(record)
                    if curves is not None:
                        curves.add_record(record)
                    done = step + 1
                    if done % cfg.checkpoint_every == 0 or done in cfg.kept_steps():
                        save(done, log)
                    bar(record)
                    if on_step is not None:
                        on_step(done, record)
            train_time = elapsed + time.perf_counter() - t0

            t1 = time.perf_counter()
            evaluate_kw = dict(objective=spec.objective, mask_id=corpus_tokens.mask_id, mask_rate=cfg.mask_rate,
                               windows=cfg.eval_windows, batch_size=cfg.batch_size, data_parallel=world > 1)
            val = {d: evaluate(model, corpus_tokens.val[d], **evaluate_kw) for d in DOMAINS}
            train_by = {d: evaluate(model, corpus_tokens.train_by_domain[d], **evaluate_kw) for d in DOMAINS}
            if curves is not None:
                curves.add_final(cfg.steps, val, train_by)
        finally:
            if curves is not None:
                curves.close()
    # (data parallel: the evaluation's all-reduces come after rank 0's last checkpoint, so every rank lists it)
    result = RunResult(
        name=spec.name, objective=spec.objective, train_loss=sum(train_by.values()) / len(train_by),
        val_loss=sum(val.values()) / len(val), val_loss_by_domain=val, checkpoints=ckpt.list_checkpoints(ck_dir),
        log_path=log_path, wall_time=train_time + time.perf_counter() - t1, cpu_time=time.process_time() - cpu0,
        params_active=active_params_per_token(spec.lm), params_total=total_params(spec.lm), run_dir=run_dir)
    if lead:
        write_json_atomic(run_dir / RESULT_FILE, {**result.to_dict(), "spec": spec.to_dict()})
    return result


def train_step(model: TinyLM, optimizer: torch.optim.Optimizer, sampler: BatchSampler, cfg: TrainConfig,
                step: int) -> dict:
    """One optimiser step (0-based ``step``); returns its log record (without ``time``)."""
    lr = cfg.lr_at(step)
    for group in optimizer.param_groups:
        group["lr"] = lr
    x, y = sampler.next()
    with cfg.autocasting():
        out = model(x, targets=y, logits_at_targets=sampler.objective == "masked")  # the head where y is predicted
        loss = training_loss(out, cfg.aux)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    routing = out.routing or []
    for layer, r in zip(model.moe_layers(), routing, strict=True):
        router = getattr(layer, "router", None)
        if isinstance(router, DeepSeekV3Router):
            router.update_bias(r.tokens_per_expert)  # this step's load (one micro-batch)
    return {"step": step + 1, "loss": float(out.loss.detach()), "total_loss": float(loss.detach()), "lr": lr,
            "grad_norm": float(grad_norm), "aux": {k: float(v.detach()) for k, v in sorted(out.aux_losses.items())},
            "load_cv": [load_cv(r.tokens_per_expert) for r in routing]}


def _data_parallel_step(dp: DataParallel, optimizer: torch.optim.Optimizer, sampler: BatchSampler,
                        cfg: TrainConfig, step: int) -> dict:
    """:func:`train_step` on this rank's shard of the global batch, with global statistics.

    The loss each rank backpropagates is W · (n_r / n) · CE_r + Σ coef · aux, with CE_r the mean
    over the rank's n_r predicted tokens (n over all ranks) and aux the global auxiliary losses
    (:func:`~moescope.moe.losses.global_token_sums`). DDP averages the ranks' gradients:
    (1/W) Σ_r W n_r/n ∇CE_r = ∇ of the global mean cross entropy, and the all-reduce inside
    the auxiliary losses turns their average into the global ∇aux. The weight W n_r / n is
    exactly 1 for both objectives (every row predicts the same number of tokens).
    """
    lr = cfg.lr_at(step)
    for group in optimizer.param_groups:
        group["lr"] = lr
    x, y = sampler.next()                                             # (B, T): the whole global batch
    x, y = x[dp.shard].to(dp.device), y[dp.shard].to(dp.device)       # (B/W, T): this rank's rows
    with global_token_sums(), cfg.autocasting():
        out = dp.ddp(x, targets=y, logits_at_targets=sampler.objective == "masked")
    n = (y != IGNORE_INDEX).sum()
    ce = torch.stack([out.loss.detach().double() * n, n.double()])   # [Σ token losses, tokens] over ranks
    dist.all_reduce(ce)
    with cfg.autocasting():
        loss = training_loss(replace(out, loss=out.loss * (dp.world * n / ce[1]).to(out.loss.dtype)), cfg.aux)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(dp.model.parameters(), cfg.grad_clip)  # of the averaged gradient
    optimizer.step()
    routing = out.routing or []
    loads = []
    if routing:  # the global batch's tokens per expert, every layer in one all-reduce
        local = [r.tokens_per_expert for r in routing]
        flat = torch.cat(local)
        dist.all_reduce(flat)
        loads = list(flat.split([t.numel() for t in local]))
    for layer, load in zip(dp.model.moe_layers(), loads, strict=True):
        router = getattr(layer, "router", None)
        if isinstance(router, DeepSeekV3Router):
            router.update_bias(load)  # the same global load on every rank: the biases stay equal
    aux = {k: float(v.detach()) for k, v in sorted(out.aux_losses.items())}
    ce_global = float(ce[0] / ce[1])
    total = ce_global + sum(coef * aux[name] for name, coef in cfg.aux.items() if coef and name in aux)
    return {"step": step + 1, "loss": ce_global, "total_loss": total, "lr": lr, "grad_norm": float(grad_norm),
            "aux": aux, "load_cv": [load_cv(t) for t in loads]}


@contextmanager
def _progress(enabled: bool, name: str, total: int, start: int) -> Iterator[Callable[[dict], None]]:
    """A rich progress bar (or a no-op); yields ``update(record)``."""
    if not enabled:
        yield lambda record: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), transient=False) as bar:
        task = bar.add_task(name, total=total, completed=start, loss="-")

        def update(record: dict) -> None:
            bar.update(task, completed=record["step"], loss=f"{record['loss']:.3f}")

        yield update
