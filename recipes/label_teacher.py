"""Label pairs with a teacher's raw logits into the cache, in shards if you like.

The same as ``st-dse label`` (installed with st_dse); ``--help`` lists every option with its default.
The code lives in ``st_dse/recipes/label_teacher.py``.
"""

from st_dse.recipes.label_teacher import main

if __name__ == "__main__":
    main()
