"""Every command in README.md and docs/*.md runs as written.

The ```bash blocks of README.md and of every docs/*.md page (flags.md is generated and has
none) are read line by line (``&&`` separates commands, ``#`` starts a
comment) and every command is checked in order, in a folder that holds the data the README
names (``my_data``, ``my_support``, ``my_photos``, ``my_labelled``), with the built-in data
set cut down:

- ``attnopt ...`` (and ``python main.py --mode ...``) commands run in-process, with tiny-size
  flags appended (``TINY``; later flags win), except those that need what a test cannot
  have, which the real argument parser and config validation check instead: a downloaded
  data set (``--data-root data/...``, such as ``data/miniImagenet``), a GPU (``torchrun``,
  ``--meta-batch``, ``--amp``), or an optional package that is not installed
  (``--tensorboard``);
- ``bash scripts/...``: the script exists and its extra flags parse (test_scripts.py runs the
  scripts themselves);
- ``pip install``: the extras named exist in pyproject.toml; the test suite command is
  exactly ``python -m pytest -q``; ``ruff``, ``tensorboard`` and ``benchmarks/`` scripts
  are not run here (CI runs ruff; benchmarks are never run by tests), their files must exist.

Then the ```python blocks run, in the same folder, with ``attnopt.train``/``attnopt.evaluate``
held to tiny sizes.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from conftest import make_folder_dataset, make_support, write_image

import attnopt
import attnopt.models.backbones
import attnopt.training.pipeline
from attnopt.cli.commands import _settings as settings
from attnopt.cli.commands import build_parser, main
from attnopt.config import resolve
from attnopt.errors import UserError

REPO = Path(__file__).resolve().parents[2]
# In reading order (the old single README's): later commands use the runs earlier ones made.
ORDER = ["data", "backbones", "gpu", "runs", "compare", "results", "faq", "reliability"]
PAGES = [
    REPO / "README.md",
    *sorted(
        (REPO / "docs").glob("*.md"),
        key=lambda p: (ORDER.index(p.stem) if p.stem in ORDER else len(ORDER), p.name),
    ),
]
README = "\n".join(page.read_text() for page in PAGES)  # the front page and the user guide
TINY = {
    "train": [
        *("--episode", "1", "--val-freq", "1", "--episode-val", "1", "--episode-test", "1"),
        *("--log-freq", "1", "--n-eval", "1", "--image-size", "16", "--epoch", "1", "--cpu"),
    ],
    "test": ["--episode-test", "1", "--n-eval", "1", "--epoch", "1", "--cpu"],
    "predict": ["--cpu"],
    "pretrain": ["--pretrain-epochs", "1", "--image-size", "16", "--cpu"],
}
TINY_CONFIG = {
    "episode": 1,
    "val_freq": 1,
    "episode_val": 1,
    "episode_test": 1,
    "log_freq": 1,
    "n_eval": 1,
    "image_size": 16,
    "epoch": 1,
    "cpu": True,
}
GPU_FLAGS = ("--meta-batch", "--amp")  # issue 5 adds them to the parser


def blocks(language: str) -> list[str]:
    return [
        m.group(2)
        for m in re.finditer(r"^```(\w*)\n(.*?)^```", README, re.M | re.S)
        if m.group(1) == language
    ]


def bash_commands() -> list[list[str]]:
    commands = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            command: list[str] = []
            for word in [*shlex.split(line, comments=True), "&&"]:
                if word == "&&":
                    if command:
                        commands.append(command)
                    command = []
                else:
                    command.append(word)
    return commands


def attnopt_argv(command: list[str]) -> list[str] | None:
    """The argv of ``attnopt.cli.commands.main`` that ``command`` runs, or None if it is not
    attnopt."""
    if command[0] == "attnopt":
        return command[1:]
    if command[:3] == ["python", "-m", "attnopt"]:
        return command[3:]
    if command[:3] == ["python", "main.py", "--mode"]:
        return command[3:]
    if command[0] == "torchrun":
        at = command.index("-m")
        assert command[at + 1] == "attnopt", command
        for option in command[1:at]:
            assert re.fullmatch(r"--(nproc_per_node|nnodes|node_rank)=\d+", option), option
        return command[at + 2 :]
    return None


def downloaded_data(command: list[str]) -> bool:
    """True when ``command`` reads a data set the user downloads (``--data-root data/...``)."""
    return any(
        flag == "--data-root" and root.startswith("data/")
        for flag, root in zip(command, command[1:], strict=False)
    )


def needs_gpu(command: list[str]) -> bool:
    return command[0] == "torchrun" or any(flag in command for flag in GPU_FLAGS)


def parse(argv: list[str]) -> None:
    """The real parser, and for train the config validation, accept ``argv``."""
    args = build_parser().parse_args(argv)
    if args.command == "train":
        resolve(settings(args))


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_glyphs) -> Path:
    """The working folder of the README's commands, with the user data it names."""
    make_folder_dataset(tmp_path / "my_data")
    make_support(tmp_path / "my_support", {"cat": 2, "dog": 2})
    make_support(tmp_path / "my_labelled", {"cat": 2, "dog": 1}, seed=3)
    rng = np.random.default_rng(0)
    write_image(tmp_path / "my_photos" / "a.jpg", rng)
    write_image(tmp_path / "my_photos" / "b.png", rng)
    monkeypatch.chdir(tmp_path)
    # The figures take longer than the tiny runs; test_cli.py checks them.
    monkeypatch.setattr(attnopt.training.pipeline, "draw_figures", lambda *a, **k: None)
    return tmp_path


def test_every_readme_command_runs_as_written(sandbox: Path, capsys) -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    section = pyproject.split("[project.optional-dependencies]")[1].split("\n[")[0]
    extras = re.findall(r"^(\w+) = ", section, re.M)
    ran = []
    for command in bash_commands():
        shown = shlex.join(command)
        argv = attnopt_argv(command)
        if argv is not None:
            tensorboard_missing = "--tensorboard" in argv and not importlib.util.find_spec(
                "tensorboard"
            )
            if needs_gpu(command):
                continue  # test_gpu_commands_parse
            if downloaded_data(command) or tensorboard_missing:
                parse(argv)
                continue
            status = main([*argv, *TINY.get(argv[0], [])])
            assert status == 0, f"{shown}: {capsys.readouterr().err}"
            ran.append(shown)
        elif command[0] == "bash":
            assert (REPO / command[1]).is_file(), shown
            parse(["train", *command[2:]])
        elif command[:2] == ["pip", "install"]:
            for target in command[2:]:
                name = re.fullmatch(r"(\.|-e|attnopt)(\[(\w+)\])?", target)
                assert name, f"{shown}: install '.', '.[extra]' or 'attnopt[extra]'"
                assert name.group(3) is None or name.group(3) in extras, shown
        elif command[:2] == ["python", "-m"] and command[2] == "pytest":
            assert command == ["python", "-m", "pytest", "-q"], shown
        elif command[0] == "python" and command[1].startswith("benchmarks/"):
            assert (REPO / command[1]).is_file(), shown
        elif command[0] in ("ruff", "tensorboard"):
            pass  # CI runs ruff; tensorboard is the extra's own viewer
        else:
            raise AssertionError(f"README/docs command not covered by this test: {shown}")
    assert len(ran) >= 10 and any("predict" in c for c in ran), ran
    assert (sandbox / "preds.csv").read_text().startswith("path,predicted,p_cat,p_dog\n")
    assert (sandbox / "logs" / "report.png").is_file()


def test_readme_python_examples_run(sandbox: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["train", "--data", "folder", "--data-root", "my_data", "--save", "runs/mine",
                 *TINY["train"]]) == 0  # fmt: skip
    real_train, real_evaluate = attnopt.train, attnopt.evaluate

    def tiny_train(config=None, **flags):
        return real_train(dataclasses.replace(attnopt.make_config(config, **flags), **TINY_CONFIG))

    def tiny_evaluate(checkpoint, device=None, **flags):
        return real_evaluate(checkpoint, device, **{**flags, "episode_test": 1, "epoch": 1})

    monkeypatch.setattr(attnopt, "train", tiny_train)
    monkeypatch.setattr(attnopt, "evaluate", tiny_evaluate)
    monkeypatch.setattr(
        attnopt.models.backbones, "_REGISTERED", {}
    )  # the example registers its own
    examples = blocks("python")
    assert len(examples) == 3
    namespaces: list[dict] = []
    for code in examples:
        namespaces.append({})
        exec(compile(code, "README.md or docs/", "exec"), namespaces[-1])
    assert [n["result"].test.episodes for n in namespaces if "result" in n] == [1, 1]
    # the user-backbone example: its model is the registered backbone, trained with --adapt
    # last; its function backbone builds a learner too
    (own,) = [n for n in namespaces if "small_cnn" in n]
    assert own["model"].config.backbone == "small_cnn" and own["model"].config.adapt == "last"
    learner = attnopt.ModuleLearner(own["one_conv"](3, 16), 3, 5, 16)
    assert learner.num_params == 16 * 3 * 9 + 16 + 5 * 16 + 5


@pytest.mark.parametrize(
    "command",
    [shlex.join(c) for c in bash_commands() if attnopt_argv(c) is not None and needs_gpu(c)],
)
def test_gpu_commands_parse(command: str) -> None:
    argv = attnopt_argv(shlex.split(command))
    assert argv is not None
    try:
        parse(argv)
    except UserError as e:
        pending = [flag for flag in GPU_FLAGS if f"unrecognized arguments: {flag}" in str(e)]
        if not pending:
            raise
        pytest.skip(f"{pending[0]} is not in the parser yet (issue 5 adds it)")


def test_the_readme_has_no_command_that_fails_to_parse() -> None:
    """A typo in a flag fails here, without running anything."""
    for command in bash_commands():
        argv = attnopt_argv(command)
        if argv is None or needs_gpu(command):
            continue
        try:
            build_parser().parse_args(argv)
        except UserError as e:
            raise AssertionError(f"{shlex.join(command)}: {e}") from None
