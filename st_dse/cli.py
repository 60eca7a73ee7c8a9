"""The ``st-dse`` command (also ``python -m st_dse``): the recipes as subcommands.

Usage:
    st-dse distill --task mrpc --data-dir DATA --output-dir runs/mrpc
    st-dse finetune-teacher --task mrpc --data-dir DATA --output-dir runs/mrpc-teacher
    st-dse label --task qqp-subset --teacher runs/qqp-teacher --data-dir DATA --shard-index 0 --num-shards 4
    st-dse distill --help   # every option of a command, with its default
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "distill": ("st_dse.recipes.distill", "distil a cross-encoder teacher into a DSE student"),
    "finetune-teacher": ("st_dse.recipes.finetune_teacher", "fine-tune a CrossEncoder teacher on gold labels"),
    "label": ("st_dse.recipes.label_teacher", "label pairs with a teacher into the cache, in shards"),
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        listing = "\n".join(f"  {name:<18}{help_text}" for name, (_, help_text) in COMMANDS.items())
        print(f"usage: st-dse {{{','.join(COMMANDS)}}} [options]\n\ncommands:\n{listing}")
        if argv and argv[0] not in ("-h", "--help"):
            raise SystemExit(f"error: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}.")
        raise SystemExit(0 if argv else 2)
    sys.argv[0] = f"st-dse {argv[0]}"  # the program name --help and argument errors show
    importlib.import_module(COMMANDS[argv[0]][0]).main(argv[1:])
