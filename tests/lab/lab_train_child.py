"""Run a tiny training in a child process that dies by SIGKILL (tests/lab/test_lab_train.py).

usage: python lab_train_child.py OUT_DIR MODE
  slow           sleep 0.1 s after every step; the parent kills this process mid-run
  kill-in-write  SIGKILL itself between writing checkpoint 8's temporary model file and its rename
"""

import os
import signal
import sys
import time
from pathlib import Path

from lab_fixtures import tiny_spec, tiny_tokens

from moescope.lab.checkpoint import MODEL_FILE
from moescope.lab.train import train_run

out_dir, mode = sys.argv[1], sys.argv[2]
on_step = None
if mode == "slow":
    def on_step(step, record):
        time.sleep(0.1)
elif mode == "kill-in-write":
    replace = os.replace

    def dying_replace(src, dst):
        if Path(dst).name == MODEL_FILE and ".step_000008." in str(dst):
            os.kill(os.getpid(), signal.SIGKILL)   # the temp file is written and fsynced, not renamed
        return replace(src, dst)

    os.replace = dying_replace
else:
    raise SystemExit(f"unknown mode {mode!r}")
tokens = tiny_tokens()
print("ready", flush=True)
train_run(tiny_spec("topk"), tokens, out_dir, progress=False, on_step=on_step)
