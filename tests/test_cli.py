"""The ``st-dse`` command: each recipe as a subcommand, with every option and its default in --help."""

from __future__ import annotations

import subprocess
import sys

import pytest

from st_dse.cli import COMMANDS, main
from tests.conftest import REPO_ROOT


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_lists_every_option_with_its_default(command, capsys):
    with pytest.raises(SystemExit) as stopped:
        main([command, "--help"])
    assert stopped.value.code == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"usage: st-dse {command}")
    assert "--output-dir" in shown or "--teacher" in shown
    assert shown.count("(default:") >= 5


def test_the_command_runs_what_the_recipe_runs(tmp_path, monkeypatch):
    # The same refusal, word for word, from the installed command and from the recipe's own main().
    from st_dse.recipes import distill

    monkeypatch.chdir(tmp_path)

    arguments = ["--task", "mrpc", "--output-dir", "."]  # the working directory: refused before any work
    messages = []
    for run in (lambda: main(["distill", *arguments]), lambda: distill.main(arguments)):
        with pytest.raises(SystemExit) as stopped:
            run()
        messages.append(str(stopped.value.code))
    assert messages[0] == messages[1] and messages[0].startswith("error:")


def test_an_unknown_command_names_the_commands():
    with pytest.raises(SystemExit, match="unknown command 'lable'; choose one of distill, finetune-teacher, label"):
        main(["lable"])


def test_python_dash_m_and_the_task_scripts_start():
    listing = subprocess.run([sys.executable, "-m", "st_dse", "--help"], capture_output=True, text=True, check=True)
    assert all(command in listing.stdout for command in COMMANDS)
    script = subprocess.run(
        [sys.executable, "recipes/distill_mrpc.py", "--help"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert script.returncode == 0 and "--ranking-weight" in script.stdout
