"""The flags reference, docs/flags.md, rendered from the argument parser.

``python -m attnopt.cli.flags_page > docs/flags.md`` regenerates it; tests/e2e/test_docs.py
fails when the page and the parser drift apart. Every subcommand is a section and every
argument group of it a table (flag, default, meaning); arguments whose help is suppressed are
left out.
"""

from __future__ import annotations

import argparse

from attnopt.cli.commands import build_parser

REGENERATE = "python -m attnopt.cli.flags_page > docs/flags.md"


def _cell(text: object) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _flag(action: argparse.Action) -> str:
    names = action.option_strings or [action.dest]
    shown = ", ".join(f"`{name}`" for name in names)
    if action.option_strings and action.nargs != 0:
        metavar = action.metavar or action.dest.upper()
        if isinstance(metavar, tuple):
            metavar = " ".join(metavar)
        shown += f" `{metavar}`"
    return shown


def _default(action: argparse.Action) -> str:
    default = action.default
    if default is None or default is argparse.SUPPRESS:
        return ""
    if isinstance(default, (list, tuple)):
        default = " ".join(str(d) for d in default)
    return f"`{default}`" if str(default) != "" else ""


def _help(action: argparse.Action, parser: argparse.ArgumentParser) -> str:
    text = action.help or ""
    if "%" in text:
        try:
            text = text % {**vars(action), "prog": parser.prog}
        except (KeyError, TypeError, ValueError):
            pass
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        text += f" (one of: {', '.join(str(c) for c in action.choices)})"
    return _cell(text)


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.extend(action.choices.items())
    return found


def _section(name: str, parser: argparse.ArgumentParser) -> list[str]:
    lines = [f"## `{name}`", ""]
    if parser.description:
        lines += [_cell(parser.description), ""]
    for group in parser._action_groups:
        actions = [
            a
            for a in group._group_actions
            if a.help is not argparse.SUPPRESS
            and not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
        ]
        if not actions:
            continue
        lines += [f"### {group.title}", ""]
        if group.description:
            lines += [_cell(group.description), ""]
        lines += ["| flag | default | meaning |", "|---|---|---|"]
        lines += [f"| {_flag(a)} | {_default(a)} | {_help(a, parser)} |" for a in actions]
        lines.append("")
    return lines


def flags_markdown(parser: argparse.ArgumentParser | None = None) -> str:
    """The Markdown of docs/flags.md: every subcommand's flags, by argument group."""
    parser = parser or build_parser()
    lines = [
        "# Flags",
        "",
        "Every flag of every `attnopt` subcommand, generated from the argument parser",
        f"(`{REGENERATE}`; a test fails when this page drifts from it). Where a default depends",
        "on the data set, the meaning names each data set's value; `attnopt COMMAND --help`",
        "prints the same.",
        "",
        "The seed's `--input-size`, `--bn-momentum` and `--pin-mem` are still accepted (by",
        "`attnopt` and by `python main.py --mode ...`, so the seed's scripts run unchanged) but",
        "do nothing here, and are hidden from `--help`: the LSTM's input is always the 4",
        "preprocessed numbers, no BatchNorm running statistics are kept, and episodes are",
        "drawn from an in-memory array.",
        "",
    ]
    top = _section("attnopt", parser)[2:]
    if any(line.startswith("|") for line in top):
        lines += ["## `attnopt`", "", *top]
    for name, sub in _subcommands(parser):
        lines += _section(f"attnopt {name}", sub)
    return "\n".join(lines).rstrip("\n") + "\n"


if __name__ == "__main__":
    print(flags_markdown(), end="")
