"""Fail the set-up loudly if anything replaced the pinned CPU build of torch."""

import sys

import torch

if not torch.__version__.startswith("2.13.0") or torch.version.cuda is not None:
    sys.exit(
        f"moescope expects the CPU build of torch 2.13.0 (constraints.txt), found {torch.__version__} "
        f"(CUDA {torch.version.cuda}). A dependency probably pulled another torch; reinstall with "
        "`pip install -c constraints.txt torch==2.13.0`."
    )
print(f"torch {torch.__version__} (CPU build) OK")
