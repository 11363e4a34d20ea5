"""Command line: ``attnopt train|test|predict|plot|report`` and the seed's
``python main.py --mode train|test``.

Every user error ends with exit status 2 and one line ``error: ...``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import unicodedata
import warnings
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from attnopt.checkpoint import load_checkpoint
from attnopt.config import (
    AMP_MODES,
    ATTENTION_MODES,
    AUGMENT_MODES,
    BN_MODES,
    CROP_MODES,
    DATA_SETS,
    resolve,
)
from attnopt.errors import UserError
from attnopt.evaluate import test_checkpoint
from attnopt.fileio import write_json
from attnopt.predict import FORMATS
from attnopt.runtime import printable, select_device

log = logging.getLogger("attnopt")


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


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    """The seed's flags (same names and meanings) plus attnopt's own. Defaults come from
    the data set's preset (see attnopt.config), so every flag defaults to None here."""
    g = p.add_argument_group("episodes")
    g.add_argument("--n-shot", type=int, help="K, support images per class (5)")
    g.add_argument("--n-eval", type=int, help="Q, query images per class (15)")
    g.add_argument("--n-class", type=int, help="N, classes per episode (5)")
    g = p.add_argument_group("model")
    g.add_argument("--input-size", type=int, help="meta-learner LSTM input size (4)")
    g.add_argument("--hidden-size", type=int, help="meta-learner LSTM hidden size (20)")
    g.add_argument(
        "--attention",
        choices=ATTENTION_MODES,
        help="both = MLAL (default); meta = attention-LSTM meta-learner; learner = "
        "cross-attention learner; none = Ravi & Larochelle",
    )
    g.add_argument(
        "--attn-chunk", type=int, help="coordinates per meta-learner attention token (64)"
    )
    g.add_argument(
        "--attn-block", type=int, help="conv block (1-4) followed by the cross-attention (3)"
    )
    g.add_argument(
        "--attn-lr-scale",
        type=float,
        help="learning rate of the attention meta-parameters relative to --lr (1)",
    )
    g.add_argument("--image-size", type=int, help="image side in pixels (28 glyphs, 84 photos)")
    g.add_argument(
        "--bn",
        choices=BN_MODES,
        help="query BatchNorm statistics: from the support set (default) or the query batch itself",
    )
    g.add_argument("--bn-eps", type=float, help="BatchNorm epsilon (1e-3)")
    g.add_argument(
        "--bn-momentum",
        type=float,
        help="accepted for the seed's scripts; unused: no running statistics",
    )
    g = p.add_argument_group("inner loop")
    g.add_argument("--epoch", type=int, help="passes over the support set (8; 12 for 1-shot)")
    g.add_argument("--batch-size", type=int, help="inner mini-batch size (N*K)")
    g = p.add_argument_group("meta-training")
    g.add_argument("--lr", type=float, help="Adam learning rate (1e-3)")
    g.add_argument("--grad-clip", type=float, help="meta-gradient norm clip (0.25)")
    g.add_argument("--episode", type=int, help="meta-training episodes (tasks)")
    g.add_argument(
        "--meta-batch",
        type=int,
        help="tasks per meta-update, adapted together (1, as in the paper); under torchrun "
        "split across the processes",
    )
    g.add_argument(
        "--eval-batch",
        type=int,
        help="tasks adapted together in validation and test (20 on GPUs, 1 on CPUs)",
    )
    g.add_argument(
        "--amp",
        choices=AMP_MODES,
        help="bf16: run the learner's convolutions in bfloat16 (θ and meta-learner stay fp32)",
    )
    g.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the inner loop: faster after a warm-up of tens of seconds "
        "(needs a C++ compiler on the CPU)",
    )
    g.add_argument("--episode-val", type=int, help="validation episodes (100)")
    g.add_argument("--episode-test", type=int, help="test episodes (600)")
    g.add_argument("--val-freq", type=int, help="validate every this many episodes")
    g.add_argument("--log-freq", type=int, help="log every this many episodes (50)")
    g.add_argument(
        "--max-bad-steps",
        type=int,
        help="stop after this many consecutive non-finite losses or meta-gradients; each "
        "one's update is skipped (10)",
    )
    g = p.add_argument_group("data")
    g.add_argument("--data", choices=DATA_SETS, help="data set (glyphs: built in)")
    g.add_argument("--data-root", help="the data set's folder (see README)")
    g.add_argument(
        "--crop", choices=CROP_MODES, help="bbox: cut CUB photos to their bounding boxes (none)"
    )
    g.add_argument("--cache-dir", help="where decoded images are cached (~/.cache/attnopt)")
    g.add_argument("--n-workers", type=int, help="threads decoding images (4)")
    g.add_argument(
        "--skip-bad-images",
        action="store_true",
        default=None,
        help="skip unreadable images (and list them) instead of stopping",
    )
    g.add_argument(
        "--augment",
        choices=AUGMENT_MODES,
        help="training-time augmentation: auto (photos: crop/flip/jitter; glyphs: mild "
        "affine) or none",
    )
    g.add_argument("--pin-mem", type=_bool, metavar="BOOL", help="accepted for the seed; unused")
    g = p.add_argument_group("run")
    g.add_argument("--save", help="run folder (logs)")
    g.add_argument("--resume", help="checkpoint to continue from (train) or to evaluate (test)")
    g.add_argument("--cpu", action="store_true", default=None, help="use the CPU even with a GPU")
    g.add_argument("--seed", type=int, help="random seed (0)")
    g.add_argument(
        "--deterministic",
        action="store_true",
        default=None,
        help="GPU: use deterministic algorithms only (slower); the CPU always is",
    )


def _add_predict_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", required=True, metavar="CKPT", help="a trained checkpoint")
    p.add_argument(
        "--support",
        required=True,
        metavar="DIR",
        help="labelled images: DIR/<class>/<image>, at most as many classes as in training",
    )
    p.add_argument(
        "--query", required=True, nargs="+", metavar="PATH", help="image files and/or folders"
    )
    p.add_argument("--output", metavar="FILE", help="write the predictions here (CSV) instead")
    p.add_argument(
        "--format",
        choices=FORMATS,
        help="table (default on the console), csv (default with --output) or json",
    )
    p.add_argument("--cpu", action="store_true", help="use the CPU even with a GPU")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="attnopt", description="Few-shot learning with a learned LSTM optimizer.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = sub.add_parser("train", help="meta-train, then test the best checkpoint")
    _add_run_flags(train)
    train.add_argument(
        "--tensorboard",
        action="store_true",
        default=None,
        help='also log scalars to RUN_DIR/tensorboard (pip install "attnopt[tensorboard]")',
    )
    _add_run_flags(sub.add_parser("test", help="evaluate a checkpoint on the test split"))
    _add_predict_flags(
        sub.add_parser("predict", help="adapt to a folder of labelled images, classify others")
    )
    plot = sub.add_parser("plot", help="draw the gate and attention figures of a run")
    plot.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (--save of a training run)")
    report = sub.add_parser("report", help="draw report.png (learning curves), print a summary")
    report.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (--save of a run)")
    return parser


def _flags(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if k != "command"}


def _train(args: argparse.Namespace) -> None:
    from attnopt.train import train  # imported late: argument errors stay fast

    result = train(resolve(_flags(args)))
    if result is not None:  # None on torchrun processes other than rank 0
        print(f"test accuracy {result.test.summary()}")


def _test(args: argparse.Namespace) -> None:
    if not args.resume:
        raise UserError("test needs --resume CKPT, the checkpoint to evaluate")
    ckpt = load_checkpoint(args.resume)
    config = resolve(_flags(args), base=ckpt["config"])
    ckpt_path = Path(args.resume)
    run_dir = (
        Path(args.save)
        if args.save
        else (ckpt_path.parent.parent if ckpt_path.parent.name == "ckpts" else ckpt_path.parent)
    )
    result = test_checkpoint(args.resume, config, select_device(config.cpu))
    write_json(
        run_dir / "test.json",
        {**result.to_dict(), "checkpoint": str(ckpt_path), "episode": ckpt["episode"]},
    )
    print(f"test accuracy {result.summary()}")


def _predict(args: argparse.Namespace) -> None:
    from attnopt.predict import run_predict

    text = run_predict(args.resume, args.support, args.query, args.output, args.format, args.cpu)
    sys.stdout.write(text)


def _report(args: argparse.Namespace) -> None:
    from attnopt.report import write_report

    path, summary = write_report(args.run_dir)
    print(summary)
    print(f"wrote {path}")


def _plot(args: argparse.Namespace) -> None:
    from attnopt.plot import plot_run

    for path in plot_run(args.run_dir):
        print(f"wrote {path}")


def one_line(message: str) -> str:
    """``message`` with control characters and line breaks (from file names, say) escaped,
    so that an error is always exactly one line."""
    return "".join(
        ch.encode("unicode_escape").decode("ascii")
        if unicodedata.category(ch) in ("Cc", "Zl", "Zp")
        else ch
        for ch in message
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``attnopt`` command. Returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # Oversized images are refused with an error line of their own (attnopt.data.decode).
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    try:
        args = build_parser().parse_args(argv)
        commands = {
            "train": _train,
            "test": _test,
            "predict": _predict,
            "plot": _plot,
            "report": _report,
        }
        commands[args.command](args)
    except UserError as e:
        print(printable(f"error: {one_line(str(e))}", sys.stderr), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; continue with --resume <save>/ckpts/last.pt", file=sys.stderr)
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
    if known.mode is None:
        if "-h" in rest or "--help" in rest:
            return main(["--help"])
        print("error: --mode train|test is required", file=sys.stderr)
        return 2
    return main([known.mode, *rest])
