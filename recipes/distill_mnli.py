"""Distil a cross-encoder teacher into a DSE student on MNLI. Options: see recipes/distill.py (--help).

Usage:
    python recipes/distill_mnli.py --data-dir DATA --output-dir runs/mnli
"""

from __future__ import annotations

from st_dse.recipes.distill import main

if __name__ == "__main__":
    main(task="mnli")
