"""Expert ablation of a lab run: ``moescope ablate OUT/training/runs/NAME``.

The run's final checkpoint (the newest that verifies) is loaded as the :class:`~moescope.lab.model.TinyLM`
it trained, and the loss is measured on the *validation* documents of each lab domain, tokenised
with the lab's own tokenizer (cached in the run's training folder, its fingerprint checked against
``training.json``) — so the map says which expert carries which domain on text the model never trained
on. Only next-token (causal) runs: the masked-token runs have no next-token loss to ablate.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from moescope.lab import checkpoint as ckpt
from moescope.lab.corpus import CorpusConfig, build_corpus
from moescope.lab.runs import SUMMARY_FILE
from moescope.lab.tokenizer import load_or_train_tokenizer, tokenize_corpus
from moescope.lab.train import CHECKPOINT_DIR, LOG_FILE, RunSpec
from moescope.lab.trained import load_run
from moescope.models import find_moe_layers


def is_lab_run(path: str | Path) -> bool:
    """True for a lab run folder (``checkpoints/`` and ``metrics.jsonl``, as :func:`~moescope.lab.train.train_run`
    writes them)."""
    path = Path(path)
    return (path / CHECKPOINT_DIR).is_dir() and (path / LOG_FILE).is_file()


def load_lab_run(run_dir: str | Path, *, seq_len: int, max_windows: int) -> tuple[torch.nn.Module, list, dict, dict]:
    """``(model, views, domains, about)`` of a lab run: windows (W, T) of each domain's validation stream,
    T = min(``seq_len``, the model's context), at most ``max_windows`` spread over the stream."""
    from moescope.analysis.ablate import windows

    run_dir = Path(run_dir)
    found = ckpt.latest_checkpoint(run_dir / CHECKPOINT_DIR)
    if found is None:
        raise ValueError(f"{run_dir / CHECKPOINT_DIR} holds no complete checkpoint; train the run first "
                         "(moescope train --runs NAME)")
    path, state = found
    spec = RunSpec.from_dict(state["config"]["run"])  # the run the checkpoint belongs to
    if spec.objective != "causal" or spec.lm.bidirectional:
        raise ValueError(f"run {spec.name!r} trains the {spec.objective} objective; ablation measures next-token "
                         "loss, so only the lab's causal runs can be ablated")
    if spec.lm.ffn != "moe":
        raise ValueError(f"run {spec.name!r} has no MoE layer (a dense baseline); there is no expert to ablate")
    model = load_run(spec, path)
    views = find_moe_layers(model)
    training_dir = run_dir.parent.parent
    summary_path = training_dir / SUMMARY_FILE
    if not summary_path.is_file():
        raise ValueError(f"{summary_path} is missing; the run's corpus and tokenizer are described there")
    summary = json.loads(summary_path.read_text())
    corpus = build_corpus(CorpusConfig(**summary["profile"]["corpus"]))
    tokens = tokenize_corpus(corpus, load_or_train_tokenizer(corpus, training_dir, spec.lm.vocab_size))
    if tokens.fingerprint != state["config"]["tokens"]:
        raise ValueError(f"the corpus or tokenizer rebuilt in {training_dir} differs from the one the run trained on "
                         "(fingerprints differ)")
    length = min(seq_len, spec.lm.seq_len)
    domains = {d: windows(stream.tolist(), length, max_windows) for d, stream in tokens.val.items()}
    about = {"path": str(run_dir), "model_type": f"moescope TinyLM ({spec.name}, step {state['step']})",
             "dtype": "float32", "device": "cpu"}
    return model, views, domains, about
