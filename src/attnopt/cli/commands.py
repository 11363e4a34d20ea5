"""Command line: ``attnopt train|pretrain|test|predict|plot|report|info|compare`` and the seed's
``python main.py --mode train|test``.

Every user error ends with exit status 2 and one line ``error: ...``. The flags of train and
test are built from :class:`attnopt.config.Config`'s fields (help text, defaults, choices),
and the heavy modules are imported by the command that needs them: ``attnopt --help`` and a
bad flag answer at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from attnopt.config import DERIVED, PRETRAIN_DEFAULTS, Config, flag, preset_default
from attnopt.errors import Interrupted, UserError, one_line, printable

log = logging.getLogger("attnopt")
FORMATS = ("table", "csv", "json")  # attnopt predict --format
_TYPES = {"int": int, "float": float, "str": str}


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad flags as a UserError instead of printing usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see `{self.prog} --help`)")


def _bool(text: str) -> bool:
    """The seed's ``--pin-mem True`` style booleans."""
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def _help(field: dataclasses.Field, command: str) -> str:
    """The field's help text with its default, read from the config and the presets."""
    text = field.metadata["help"]
    if command == "pretrain" and field.name in PRETRAIN_DEFAULTS:
        return f"{text} (default: {PRETRAIN_DEFAULTS[field.name]})"
    by_data = preset_default(field.name)
    if by_data:
        return f"{text} (default by --data: {by_data})"
    if field.name in DERIVED:
        return f"{text} (default: {DERIVED[field.name].text})"
    if field.default is None or field.metadata["kind"] in ("switch", "toggle"):
        return text
    return f"{text} (default: {field.default})"


EXPERIMENTAL_GROUP = "experimental (measured no gain)"
EXPERIMENTAL = frozenset(
    {"attn_feeds", "attn_heads", "attn_lr_scale", "inner_grad_scale", "bn_train"}
)
# The seed's flags that do nothing here: accepted for its scripts, hidden from --help.
HIDDEN = frozenset({"input_size", "bn_momentum", "pin_mem"})


def _group_name(field: dataclasses.Field) -> str:
    """The help group a flag is listed under."""
    return EXPERIMENTAL_GROUP if field.name in EXPERIMENTAL else field.metadata["group"]


def _add_settings(parser: argparse.ArgumentParser, command: str) -> None:
    """One flag per Config field (the seed's flags keep their names and meanings). Every
    flag defaults to None here: what was not given comes from the preset or the checkpoint."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for field in dataclasses.fields(Config):
        meta = field.metadata
        if command == "pretrain":
            if not meta["pretrain"]:
                continue
        elif meta["train_only"] and command != "train":
            continue
        group = _group_name(field)
        if group not in groups:
            groups[group] = parser.add_argument_group(group)
        shown = argparse.SUPPRESS if field.name in HIDDEN else _help(field, command)
        options: dict = {"dest": field.name, "default": None, "help": shown}
        if meta["kind"] == "switch":
            options["action"] = "store_true"
        elif meta["kind"] == "toggle":
            options["action"] = argparse.BooleanOptionalAction
        elif meta["kind"] == "bool":
            options.update(type=_bool, metavar="BOOL")
        else:
            options.update(type=_TYPES[str(field.type).split(" |")[0]], choices=meta["choices"])
        groups[group].add_argument(flag(field.name), **options)


def _add_predict_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", required=True, metavar="CKPT", help="a trained checkpoint")
    p.add_argument(
        "--support",
        required=True,
        metavar="DIR",
        help="labelled images: DIR/<class>/<image>, at most as many classes as in training",
    )
    p.add_argument(
        "--query",
        required=True,
        nargs="+",
        metavar="PATH",
        help="image files and/or folders; a folder DIR/<class>/<image> with the support's "
        "class names is labelled: accuracy and a confusion matrix follow the predictions",
    )
    p.add_argument("--output", metavar="FILE", help="write the predictions here (CSV) instead")
    p.add_argument(
        "--format",
        choices=FORMATS,
        help="table (default on the console), csv (default with --output) or json",
    )
    p.add_argument("--cpu", action="store_true", help="use the CPU even with a GPU")


def command_parser(sub: argparse._SubParsersAction, command: str) -> argparse.ArgumentParser:
    """The parser of one sub-command."""
    helps = {
        "train": "meta-train, then test the best checkpoint",
        "pretrain": "pre-train the learner's features on the training classes (for train --init)",
        "test": "evaluate a checkpoint on the test split",
        "predict": "adapt to a folder of labelled images, classify others",
        "plot": "draw the gate and attention figures of a run",
        "report": "draw report.png (learning curves), print a summary",
        "info": "how a checkpoint was trained (reads no data)",
        "compare": "paired comparison of runs tested on the same episodes",
    }
    p = sub.add_parser(command, help=helps[command], description=helps[command])
    if command in ("train", "test", "pretrain"):
        _add_settings(p, command)
    if command in ("train", "pretrain"):
        p.add_argument(
            "--overwrite",
            action="store_true",
            help="replace a run already in the --save folder (otherwise an error)",
        )
    if command == "predict":
        _add_predict_flags(p)
    elif command in ("plot", "report"):
        p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (--save of a run)")
    elif command == "info":
        p.add_argument("checkpoint", metavar="CKPT", help="a checkpoint (.pt)")
    elif command == "compare":
        p.add_argument(
            "records",
            nargs="+",
            metavar="RUN_OR_TEST",
            help="run folders (their test.json) or test records (evals/*.json); each is "
            "compared with the first",
        )
    return p


COMMANDS = ("train", "pretrain", "test", "predict", "plot", "report", "info", "compare")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="attnopt", description="Few-shot learning with a learned LSTM optimizer.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command_parser(sub, command)
    return parser


def _settings(args: argparse.Namespace) -> dict:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(Config) if f.name in args}


def _train(args: argparse.Namespace) -> None:
    from attnopt.api import train

    result = train(overwrite=args.overwrite, **_settings(args))
    if result is not None:  # None on torchrun processes other than rank 0
        print(f"test accuracy {result.test.summary()}")


def _pretrain(args: argparse.Namespace) -> None:
    from attnopt.config import resolve
    from attnopt.training.pretrain import pretrain

    result = pretrain(resolve(_settings(args), command="pretrain"), args.overwrite)
    print(
        f"pre-trained {result.checkpoint}: training loss {result.loss:.4f}, accuracy "
        f"{result.accuracy:.2f}% in the last epoch (augmented images)"
    )


def _test(args: argparse.Namespace) -> None:
    from attnopt.config import resolve
    from attnopt.runs import folder as runfolder
    from attnopt.runs import records
    from attnopt.runtime.device import select_device
    from attnopt.training.checkpoint import as_saved, load_checkpoint, refuse_pretrained
    from attnopt.training.evaluation import test_checkpoint

    if not args.resume:
        raise UserError("test needs --resume CKPT, the checkpoint to evaluate")
    ckpt = load_checkpoint(args.resume)
    refuse_pretrained(ckpt, args.resume)
    config = resolve(_settings(args), command="test", saved=as_saved(ckpt, args.resume))
    run_dir = Path(args.save) if args.save else runfolder.run_dir_of(args.resume)
    device = select_device(config.cpu)
    log.info("testing %s on %d episodes (%s)", args.resume, config.episode_test, device.type)
    result = test_checkpoint(args.resume, config, device)
    record = run_dir / "evals" / f"{records.eval_name(args.resume, config)}.json"
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        from attnopt.runs.fileio import os_error_message

        raise UserError(os_error_message("write", record.parent, e)) from None
    records.write_test_record(record, result, args.resume, ckpt["episode"], run_dir)
    log.info("wrote %s", record)
    print(f"test accuracy {result.summary()}")


def _predict(args: argparse.Namespace) -> None:
    from attnopt.cli.predict import run_predict

    text = run_predict(args.resume, args.support, args.query, args.output, args.format, args.cpu)
    sys.stdout.write(text)


def _report(args: argparse.Namespace) -> None:
    from attnopt.figures.report import write_report

    path, summary = write_report(args.run_dir)
    print(summary)
    print(f"wrote {path}")


def _plot(args: argparse.Namespace) -> None:
    from attnopt.figures.plot import plot_run

    for path in plot_run(args.run_dir):
        print(f"wrote {path}")


def _info(args: argparse.Namespace) -> None:
    from attnopt.cli.info import describe

    print(describe(args.checkpoint))


def _compare(args: argparse.Namespace) -> None:
    from attnopt.cli.compare import compare

    print(compare(args.records))


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line; a flag the sub-command does not know is an error pointing to
    that sub-command's help."""
    args, extra = build_parser().parse_known_args(argv)
    if extra:
        raise UserError(
            f"unrecognized arguments: {' '.join(extra)} (see `attnopt {args.command} --help`)"
        )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``attnopt`` command. Returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # Oversized images are refused with an error line of their own (attnopt.data.decode).
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    try:
        args = _parse(argv)
        commands = {
            "train": _train,
            "pretrain": _pretrain,
            "test": _test,
            "predict": _predict,
            "plot": _plot,
            "report": _report,
            "info": _info,
            "compare": _compare,
        }
        commands[args.command](args)
    except UserError as e:
        print(printable(f"error: {one_line(str(e))}", sys.stderr), file=sys.stderr)
        return 2
    except Interrupted as e:
        print(
            printable(
                f"interrupted at episode {e.episode}; continue with: attnopt train --resume "
                f"{e.checkpoint}",
                sys.stderr,
            ),
            file=sys.stderr,
        )
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def seed_main(argv: Sequence[str] | None = None) -> int:
    """``python main.py --mode train|test ...``: the seed's entry point."""
    argv = list(sys.argv[1:] if argv is None else argv)
    mode = _Parser(prog="main.py", add_help=False)
    mode.add_argument("--mode", choices=("train", "test"))
    try:
        known, rest = mode.parse_known_args(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if "-h" in rest or "--help" in rest:
        shown = known.mode or "train"
        parser = _Parser(prog="main.py", add_help=False)
        sub = parser.add_subparsers()
        help_parser = command_parser(sub, shown)
        help_parser.prog = f"python main.py --mode {known.mode or 'train|test'}"
        help_parser.print_help()
        return 0
    if known.mode is None:
        print("error: --mode train|test is required (see `python main.py --help`)", file=sys.stderr)
        return 2
    return main([known.mode, *rest])
