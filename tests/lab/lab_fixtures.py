"""A tiny corpus, tokenizer and LM shared by the lab's training tests (built once per process)."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from functools import cache

from moescope.lab.corpus import Corpus, CorpusConfig, build_corpus
from moescope.lab.external import ExternalConfig
from moescope.lab.model import NON_CAUSAL_ROUTERS, LMConfig, MoESpec
from moescope.lab.tokenizer import CorpusTokens, load_or_train_tokenizer, tokenize_corpus
from moescope.lab.train import RunSpec, TrainConfig

# ``lab --model`` on tiny checkpoints: ~1.5k tokens; 40 random routers on 256 tokens per domain (the
# order-statistic 95% interval of moescope.stats needs >= 39 draws, or it is unbounded); 50 regroupings:
# a second or two per checkpoint. Imported from here, not from conftest (several test folders have one).
SMALL = ExternalConfig(max_tokens=512, seq_len=32, null_draws=40, null_tokens=256, expert_draws=50)
TINY_CORPUS = CorpusConfig(chars_per_domain=20_000, doc_chars=1_000, val_fraction=0.2, seed=0)
TINY_VOCAB = 512
TINY_LM = LMConfig(vocab_size=TINY_VOCAB, d_model=32, n_layer=2, n_head=2, seq_len=16,
                   moe=MoESpec(num_experts=4, top_k=2, expert_intermediate=32))
# 12 steps: checkpoints every 4 (resume points) and at 0, 3, 6, 9, 12 (kept fractions).
TINY_TRAIN = TrainConfig(steps=12, batch_size=4, warmup_steps=2, checkpoint_every=4, eval_windows=4)


@cache
def tiny_corpus() -> Corpus:
    return build_corpus(TINY_CORPUS)


@cache
def tiny_tokens() -> CorpusTokens:
    corpus = tiny_corpus()
    with tempfile.TemporaryDirectory() as d:
        tok = load_or_train_tokenizer(corpus, d, TINY_VOCAB)
    return tokenize_corpus(corpus, tok)


def tiny_spec(router: str = "topk", name: str | None = None, **train) -> RunSpec:
    """A RunSpec of the tiny LM with ``router`` ("dense" for the dense FFN)."""
    masked = router in NON_CAUSAL_ROUTERS
    lm = replace(TINY_LM, ffn="dense", dense_intermediate=64) if router == "dense" else \
        replace(TINY_LM, moe=replace(TINY_LM.moe, router=router), bidirectional=masked)
    return RunSpec(name or router, lm, replace(TINY_TRAIN, **train), objective="masked" if masked else "causal")
