"""Distil a cross-encoder teacher into a DSE student on RTE. Options: see recipes/distill.py (--help).

Usage:
    python recipes/distill_rte.py --data-dir DATA --output-dir runs/rte
"""

from __future__ import annotations

from st_dse.recipes.distill import main

if __name__ == "__main__":
    main(task="rte")
