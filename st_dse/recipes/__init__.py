"""The recipes behind ``st-dse distill | finetune-teacher | label`` and the scripts in ``recipes/``."""
