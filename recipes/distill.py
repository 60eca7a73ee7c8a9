"""Distil a cross-encoder teacher into a fast siamese student (DSE): a benchmark task or your own pairs.

The same as ``st-dse distill`` (installed with st_dse); ``--help`` lists every option with its default.
The code lives in ``st_dse/recipes/distill.py``.
"""

from st_dse.recipes.distill import main

if __name__ == "__main__":
    main()
