"""A training worker: ``python -m moescope.lab._worker TOKENS.pt OUT_DIR [--tensorboard]``.

:func:`moescope.lab.runs.run_profile` starts ``jobs`` of these when it trains several runs at
once. The worker reads one path to a run's ``spec.json`` per line on stdin, trains that run
with :func:`~moescope.lab.train.train_run` (which writes the run's ``result.json``), then
answers ``done <name>`` on stdout; it exits at the end of stdin. Plain subprocesses (not
``multiprocessing``) need no ``if __name__ == "__main__"`` guard in the caller's script and
pickle nothing; one long-lived worker per job pays the interpreter and torch start-up once.
"""

from __future__ import annotations

import json
import sys

import torch

from moescope.lab.tokenizer import CorpusTokens
from moescope.lab.train import RunSpec, train_run


def save_tokens(tokens: CorpusTokens) -> dict:
    """The fields of ``tokens`` as a dict ``torch.load(weights_only=True)`` can read back."""
    return {"train": tokens.train, "val": tokens.val, "train_by_domain": tokens.train_by_domain,
            "vocab_size": tokens.vocab_size, "eot_id": tokens.eot_id, "mask_id": tokens.mask_id,
            "pad_id": tokens.pad_id, "fingerprint": tokens.fingerprint}


def main(argv: list[str]) -> None:
    tensorboard = "--tensorboard" in argv
    tokens_path, out_dir = [a for a in argv if a != "--tensorboard"]
    tokens = CorpusTokens(**torch.load(tokens_path, weights_only=True))
    for line in sys.stdin:
        if not line.strip():
            continue
        with open(line.strip(), encoding="utf-8") as f:
            spec = RunSpec.from_dict(json.load(f))
        train_run(spec, tokens, out_dir, progress=False, tensorboard=tensorboard)
        print(f"done {spec.name}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
