"""Fine-tune a CrossEncoder teacher on sentence pairs with gold labels: a benchmark task or your own.

The same as ``st-dse finetune-teacher`` (installed with st_dse); ``--help`` lists every option with its default.
The code lives in ``st_dse/recipes/finetune_teacher.py``.
"""

from st_dse.recipes.finetune_teacher import main

if __name__ == "__main__":
    main()
