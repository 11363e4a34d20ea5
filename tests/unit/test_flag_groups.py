"""The help groups: experimental flags apart, the seed's no-op flags accepted but hidden."""

import argparse

from attnopt.cli.commands import EXPERIMENTAL_GROUP, build_parser


def _subparser(command: str) -> argparse.ArgumentParser:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[command]


def test_seed_no_op_flags_hidden_but_accepted() -> None:
    text = _subparser("train").format_help()
    for flag in ("--input-size", "--bn-momentum", "--pin-mem"):
        assert flag not in text
    args = build_parser().parse_args(
        ["train", "--input-size", "4", "--bn-momentum", "0.9", "--pin-mem", "True"]
    )
    assert (args.input_size, args.bn_momentum, args.pin_mem) == (4, 0.9, True)


def test_experimental_group() -> None:
    train = _subparser("train")
    group = next(g for g in train._action_groups if g.title == EXPERIMENTAL_GROUP)
    flags = {a.option_strings[0] for a in group._group_actions}
    assert flags == {
        "--attn-feeds",
        "--attn-heads",
        "--attn-lr-scale",
        "--inner-grad-scale",
        "--bn-train",
    }
    assert EXPERIMENTAL_GROUP in train.format_help()
