"""Train one run in a fresh interpreter: ``python -m moescope.lab._worker SPEC.json TOKENS.pt OUT_DIR``.

:func:`moescope.lab.runs.run_profile` starts one such process per run when it trains several
runs at once. A plain subprocess (not ``multiprocessing``) needs no ``if __name__ ==
"__main__"`` guard in the caller's script and pickles nothing: the spec travels as JSON, the
tokens as a ``torch.save`` file, the result comes back as the run's ``result.json``.
"""

from __future__ import annotations

import json
import sys

import torch

from moescope.lab.tokenizer import CorpusTokens
from moescope.lab.train import RunSpec, train_run


def save_tokens(tokens: CorpusTokens) -> dict:
    return {"train": tokens.train, "val": tokens.val, "train_by_domain": tokens.train_by_domain,
            "vocab_size": tokens.vocab_size, "eot_id": tokens.eot_id, "mask_id": tokens.mask_id,
            "pad_id": tokens.pad_id, "fingerprint": tokens.fingerprint}


def main(argv: list[str]) -> None:
    spec_path, tokens_path, out_dir = argv
    with open(spec_path, encoding="utf-8") as f:
        spec = RunSpec.from_dict(json.load(f))
    tokens = CorpusTokens(**torch.load(tokens_path, weights_only=True))
    train_run(spec, tokens, out_dir, progress=False)


if __name__ == "__main__":
    main(sys.argv[1:])
