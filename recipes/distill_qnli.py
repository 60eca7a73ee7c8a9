"""Distil a cross-encoder teacher into a DSE student on QNLI. Options: see recipes/distill.py (--help).

Usage:
    python recipes/distill_qnli.py --data-dir DATA --output-dir runs/qnli
"""

from __future__ import annotations

from st_dse.recipes.distill import main

if __name__ == "__main__":
    main(task="qnli")
