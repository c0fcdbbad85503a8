"""``fedhub completion bash``: shell completion of commands and options.

The script is generated from the parser itself (every command, action and option), so it
cannot fall behind the CLI; completing costs no Python start-up. Load it with
``eval "$(fedhub completion bash)"`` (e.g. in ``~/.bashrc``); zsh users can load the same
script after ``autoload -U bashcompinit && bashcompinit``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from hub.cliutil import examples

__all__ = ["add_commands", "bash_script"]

_FUNCTION = r"""_fedhub() {
    local cur="${COMP_WORDS[COMP_CWORD]}" path="fedhub" word i
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${COMP_WORDS[i]}"
        if [[ "$word" != -* && " ${_fedhub_children[$path]} " == *" $word "* ]]; then
            path="$path $word"
        fi
    done
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "${_fedhub_options[$path]}" -- "$cur"))
    else
        COMPREPLY=($(compgen -W "${_fedhub_children[$path]}" -- "$cur"))
    fi
}
complete -o default -F _fedhub fedhub
"""


def _tree(parser: argparse.ArgumentParser, path: str, out: dict[str, tuple[str, str]]) -> None:
    children: list[str] = []
    options: list[str] = []
    for action in parser._actions:
        options += [o for o in action.option_strings if o.startswith("--") or len(o) == 2]
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                children.append(name)
                _tree(child, f"{path} {name}", out)
    out[path] = (" ".join(children), " ".join(options))


def bash_script(parser: argparse.ArgumentParser) -> str:
    """The bash completion script of ``parser`` (the full ``fedhub`` parser)."""
    tree: dict[str, tuple[str, str]] = {}
    _tree(parser, "fedhub", tree)
    lines = ['# fedhub completion for bash: eval "$(fedhub completion bash)"']
    for kind, index in (("children", 0), ("options", 1)):
        lines.append(f"declare -gA _fedhub_{kind}=(")
        lines += [
            f"    [{shlex.quote(p)}]={shlex.quote(v[index])}" for p, v in sorted(tree.items())
        ]
        lines.append(")")
    return "\n".join(lines) + "\n" + _FUNCTION


def cmd_completion(args: argparse.Namespace) -> int:
    """Print the completion script of the whole ``fedhub`` command line."""
    from hub.cli import build_parser

    sys.stdout.write(bash_script(build_parser()))
    return 0


def add_commands(sub: Any) -> None:
    """Add ``completion`` to the ``fedhub`` subcommands."""
    from hub.cli import command_help

    completion = sub.add_parser(
        "completion",
        help=command_help("completion"),
        description="Print a bash completion script for fedhub (commands, actions, options).",
        epilog=examples(
            'eval "$(fedhub completion bash)"',
            "fedhub completion bash > ~/.local/share/bash-completion/completions/fedhub",
        ),
    )
    completion.add_argument(
        "shell", choices=("bash",), help="the shell (bash; zsh via bashcompinit)"
    )
    completion.set_defaults(func=cmd_completion)
