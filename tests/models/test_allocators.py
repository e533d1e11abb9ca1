"""Loading a model bounds oneDNN's primitive cache (moescope.models.memory), unless the user chose a size."""

import os
import subprocess
import sys

import pytest

from moescope.models.memory import ONEDNN_CACHE

SCRIPT = """
import os, sys
from moescope.models import load_moe_model
load_moe_model(sys.argv[1], dtype="bfloat16")
print(os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY"))
"""


@pytest.mark.parametrize(("preset", "expected"), [(None, str(ONEDNN_CACHE)), ("7", "7")])
def test_loading_bounds_the_onednn_cache_unless_the_user_set_it(checkpoint, preset, expected):
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    if preset is not None:
        env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = preset
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(checkpoint("mixtral"))], env=env, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == expected
