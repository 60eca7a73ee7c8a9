"""Distil a cross-encoder teacher into a DSE student on MRPC. Options: see recipes/distill.py (--help).

Usage:
    python recipes/distill_mrpc.py --data-dir DATA --output-dir runs/mrpc
"""

from __future__ import annotations

from st_dse.recipes.distill import main

if __name__ == "__main__":
    main(task="mrpc")
