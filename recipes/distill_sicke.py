"""Distil a cross-encoder teacher into a DSE student on SICK-E. Options: see recipes/distill.py (--help).

Usage:
    python recipes/distill_sicke.py --data-dir DATA --output-dir runs/sick-e
"""

from __future__ import annotations

from st_dse.recipes.distill import main

if __name__ == "__main__":
    main(task="sick-e")
