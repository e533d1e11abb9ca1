import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # hf_blocks.py: the tiny reference blocks
