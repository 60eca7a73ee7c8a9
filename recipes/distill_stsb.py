"""Distil a cross-encoder teacher into a DSE student on STSB. Options: see recipes/distill.py (--help).

Usage:
    python recipes/distill_stsb.py --data-dir DATA --output-dir runs/stsb
"""

from __future__ import annotations

from st_dse.recipes.distill import main

if __name__ == "__main__":
    main(task="stsb")
