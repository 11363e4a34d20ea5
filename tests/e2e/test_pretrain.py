"""attnopt pretrain: a supervised feature extractor that starts c_I (train --init), refused
wherever a meta-trained model is needed, and user errors as one error line."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import error_line, make_folder_dataset, make_support, tiny_flags

from attnopt.cli.commands import main
from attnopt.config import Config
from attnopt.models.learner import Conv4Learner, reference_module
from attnopt.training.checkpoint import PRETRAINED, load_checkpoint, save_checkpoint


def pretrain_flags(data: Path, save: Path, *extra: str) -> list[str]:
    return [
        *("pretrain", "--data", "folder", "--data-root", str(data), "--image-size", "16"),
        *("--pretrain-epochs", "8", "--pretrain-batch", "12", "--augment", "none"),
        *("--save", str(save), "--cpu", "--seed", "1", *extra),
    ]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data set, pretrained.pt): 8 epochs on 6 classes x 6 random images."""
    root = tmp_path_factory.mktemp("pretrain")
    data = make_folder_dataset(root / "mini")
    assert main(pretrain_flags(data, root / "pt")) == 0
    return data, root / "pt" / "pretrained.pt"


def test_pretraining_fits_the_training_classes(pretrained: tuple[Path, Path]) -> None:
    data, path = pretrained
    with open(path.parent / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 9))
    losses = [float(r["loss"]) for r in rows]
    assert losses[-1] < 0.5 * losses[0]  # 36 images of 6 classes: it memorises them
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[0] == 0.05 and all(a > b for a, b in zip(lrs, lrs[1:], strict=False))  # cosine
    ckpt = load_checkpoint(path)
    assert ckpt["kind"] == PRETRAINED and len(ckpt["classes"]) == 6
    # the stored weights are the classifier's: they classify the training images as it learnt
    learner = Conv4Learner(3, 6, 16)
    assert set(ckpt["model"]) == {s.name for s in learner.specs}
    net = reference_module(learner)
    theta = torch.cat([ckpt["model"][s.name].reshape(-1) for s in learner.specs])
    torch.nn.utils.vector_to_parameters(theta, net.parameters())
    from attnopt.data import load_split
    from attnopt.data.episodes import standardize, to_unit

    train = load_split(Config(data="folder", data_root=str(data), image_size=16), "train")
    with torch.no_grad():
        logits = net(standardize(to_unit(torch.from_numpy(train.images.copy()))))
    accuracy = (logits.argmax(1).numpy() == train.labels).mean()
    assert accuracy > 0.8


def test_same_seed_same_weights(pretrained: tuple[Path, Path], tmp_path: Path) -> None:
    data, path = pretrained
    assert main(pretrain_flags(data, tmp_path / "again")) == 0
    first = load_checkpoint(path)["model"]
    second = load_checkpoint(tmp_path / "again" / "pretrained.pt")["model"]
    for name, value in first.items():
        torch.testing.assert_close(second[name], value, rtol=0, atol=0)


def test_train_init_starts_c_i_from_the_features(
    pretrained: tuple[Path, Path], tmp_path: Path
) -> None:
    data, path = pretrained
    run = tmp_path / "run"
    flags = [*tiny_flags(data, run), "--init", str(path), "--episode", "2", "--val-freq", "2"]
    # a learning rate so small that meta-training cannot move c_I from where it starts
    assert main(["train", *flags, "--lr", "1e-12", "--attention", "none"]) == 0
    features = load_checkpoint(path)["model"]
    c_init = load_checkpoint(run / "ckpts" / "last.pt")["model"]["metalearner.c_init"]
    learner = Conv4Learner(3, 3, 16)
    views = learner.unflatten(c_init)
    for spec in learner.specs:
        if spec.name.startswith("block"):
            torch.testing.assert_close(views[spec.name], features[spec.name], rtol=0, atol=1e-9)
        else:  # --init-head zeros (the default)
            assert views[spec.name].abs().max() < 1e-9
    assert "c_I's features from" in (run / "train.log").read_text()


def test_random_head_and_the_cross_attention_keep_their_initialisation(
    pretrained: tuple[Path, Path], tmp_path: Path
) -> None:
    from attnopt.api import train_config
    from attnopt.models.build import build_model
    from attnopt.training.pretrain import init_from_pretrained

    data, path = pretrained
    config = train_config(
        {"init": str(path), "data": "folder", "data_root": str(data), "attention": "both"}
    )
    assert (config.image_size, config.width) == (16, 32)  # the pre-training's
    torch.manual_seed(0)
    model = build_model(config, 3)
    before = model.metalearner.c_init.detach().clone()
    init_from_pretrained(model, load_checkpoint(path), "random", path)
    after = model.learner.unflatten(model.metalearner.c_init.detach())
    untouched = model.learner.unflatten(before)
    for spec in model.learner.specs:
        if not spec.name.startswith("block"):  # the head and the cross-attention
            torch.testing.assert_close(after[spec.name], untouched[spec.name], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("command", "culprit"),
    [
        (["test", "--resume", "{ckpt}"], "not a meta-trained model"),
        (["train", "--resume", "{ckpt}"], "not a meta-trained model"),
        (["train", "--init", "{ckpt}", "--width", "16"], "block0.conv.weight"),
        (["train", "--init", "{ckpt}", "--backbone", "resnet12", "--width", "8"], "conv4"),
    ],
)
def test_a_feature_extractor_where_it_does_not_fit_is_an_error_line(
    command: list[str], culprit: str, pretrained: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    data, path = pretrained
    args = [a.replace("{ckpt}", str(path)) for a in command]
    if "--init" in args:
        args += [*tiny_flags(data, tmp_path / "run"), "--episode", "1"]
    assert main(args) == 2
    assert culprit in error_line(capsys)
    assert not (tmp_path / "run" / "ckpts").exists()


def test_predict_and_load_refuse_a_feature_extractor(
    pretrained: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    import attnopt

    _, path = pretrained
    support = make_support(tmp_path / "support", {"cat": 2, "dog": 2})
    query = str(support / "cat" / "cat_0.png")
    argv = ["predict", "--resume", str(path), "--support", str(support), "--query", query]
    assert main(argv) == 2
    assert "attnopt train --init" in error_line(capsys)
    with pytest.raises(attnopt.UserError, match="not a meta-trained model"):
        attnopt.load(path)


def test_grayscale_features_for_colour_data_is_an_error_line(
    pretrained: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    data, path = pretrained
    ckpt = load_checkpoint(path)
    save_checkpoint(
        tmp_path / "gray.pt",
        config=ckpt["config"],
        in_channels=1,  # as if pre-trained on grayscale images
        model=ckpt["model"],
        optimizer=None,
        episode=ckpt["episode"],
        best_accuracy=0.0,
        best_episode=0,
        kind=PRETRAINED,
    )
    run = tmp_path / "run"
    flags = [*tiny_flags(data, run), "--init", str(tmp_path / "gray.pt"), "--episode", "1"]
    assert main(["train", *flags]) == 2
    assert "1-channel images" in error_line(capsys)


def test_a_second_pretrain_into_the_same_folder_needs_overwrite(
    pretrained: tuple[Path, Path], capsys
) -> None:
    data, path = pretrained
    before = path.read_bytes()
    assert main(pretrain_flags(data, path.parent)) == 2
    assert "--overwrite" in error_line(capsys)
    assert path.read_bytes() == before


def test_pretrain_takes_only_its_own_flags(tmp_path: Path, capsys) -> None:
    assert main(["pretrain", "--n-shot", "5", "--save", str(tmp_path)]) == 2
    assert "--n-shot" in error_line(capsys)
    assert main(["test", "--pretrain-epochs", "5", "--resume", str(tmp_path / "x.pt")]) == 2
    assert "--pretrain-epochs" in error_line(capsys)
    assert not any(tmp_path.iterdir())


def test_info_describes_a_feature_extractor(pretrained: tuple[Path, Path], capsys) -> None:
    _, path = pretrained
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "feature extractor from attnopt pretrain" in out and "6 training classes" in out


@pytest.mark.parametrize("data", ["folder", "omniglot", "glyphs"])
def test_pretraining_augments_even_where_meta_training_does_not(data: str, tmp_path: Path) -> None:
    """Pre-training without augmentation over-fits its classes and gives meta-training
    nothing (benchmarks/README.md): ``--augment auto`` unless the flag says otherwise, also
    for the presets that meta-train without it."""
    from attnopt.config import resolve

    flags = {"data": data, "data_root": str(tmp_path), "save": str(tmp_path / "pt")}
    assert resolve(flags, command="pretrain").augment == "auto"
    assert resolve({**flags, "augment": "none"}, command="pretrain").augment == "none"
    assert resolve({**flags, "augment": None}, command="pretrain").augment == "auto"  # not given
    if data != "glyphs":
        assert resolve(flags).augment == "none"  # meta-training's default is unchanged


def test_the_pretrain_command_augments_by_default(tmp_path: Path) -> None:
    data = make_folder_dataset(tmp_path / "mini")
    flags = pretrain_flags(data, tmp_path / "pt", "--pretrain-epochs", "1")
    at = flags.index("--augment")
    del flags[at : at + 2]
    assert main(flags) == 0
    assert json.loads((tmp_path / "pt" / "config.json").read_text())["augment"] == "auto"


# attnopt train --pretrain: the pre-training as a first phase of the run ---------------------


def test_train_pretrains_first_exactly_as_the_two_commands_would(tmp_path: Path) -> None:
    """``--data folder`` pre-trains by default, into RUN/pretrain, and the run is the one that
    ``attnopt pretrain`` followed by ``train --init`` makes: the same test episode by episode."""
    data = make_folder_dataset(tmp_path / "mini")
    short = ["--episode", "2", "--val-freq", "2", "--episode-test", "3"]
    phase = ["--pretrain-epochs", "2", "--pretrain-batch", "12"]
    assert main(["train", *tiny_flags(data, tmp_path / "one"), *short, *phase]) == 0
    two_steps = pretrain_flags(data, tmp_path / "pt", *phase)
    del two_steps[two_steps.index("--augment") : two_steps.index("--augment") + 2]  # its default
    assert main(two_steps) == 0
    init = ["--init", str(tmp_path / "pt" / "pretrained.pt")]
    assert main(["train", *tiny_flags(data, tmp_path / "two"), *short, *init]) == 0

    one, two = tmp_path / "one", tmp_path / "two"
    assert (one / "pretrain" / "metrics.csv").read_text().count("\n") == 3  # header + 2 epochs
    features = load_checkpoint(one / "pretrain" / "pretrained.pt")["model"]
    for name, value in load_checkpoint(tmp_path / "pt" / "pretrained.pt")["model"].items():
        torch.testing.assert_close(features[name], value, rtol=0, atol=0)
    config = json.loads((one / "config.json").read_text())
    assert config["pretrain"] is True and config["init"] == str(one / "pretrain" / "pretrained.pt")
    assert json.loads((one / "pretrain" / "config.json").read_text())["augment"] == "auto"
    assert (one / "test_episodes.csv").read_text() == (two / "test_episodes.csv").read_text()
    log = (one / "train.log").read_text()
    assert "pre-training the features first" in log and "c_I's features from" in log


def test_a_folder_holding_a_run_fails_before_pretraining(tmp_path: Path, capsys) -> None:
    data = make_folder_dataset(tmp_path / "mini")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("episode\n")  # a run that stopped before its checkpoint
    assert main(["train", *tiny_flags(data, run)]) == 2
    assert "--overwrite" in error_line(capsys)
    assert not (run / "pretrain").exists()


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"data": "folder"}, True),  # your own images: pre-train (benchmarks/README.md)
        ({"data": "folder", "pretrain": False}, False),
        ({"data": "folder", "backbone": "resnet12"}, False),  # attnopt pretrain trains Conv-4
        ({"data": "glyphs"}, False),
        ({"data": "miniimagenet"}, False),  # the benchmarks keep the published protocol
        ({"data": "miniimagenet", "pretrain": True}, True),
    ],
)
def test_which_runs_pretrain_first(flags: dict, expected: bool) -> None:
    from attnopt.config import resolve

    assert resolve({"data_root": "/d", **flags}).pretrain is expected


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"data": "folder"}, 0.1),  # pre-trained c_I learns at a tenth (benchmarks/README.md)
        ({"data": "folder", "n_shot": 1}, 1.0),  # at 1-shot the tenth cost MLAL accuracy
        ({"data": "folder", "pretrain": False}, 1.0),  # c_I from scratch
        ({"data": "folder", "init_lr_scale": 2.0}, 2.0),  # a given value is kept
        ({"data": "glyphs"}, 1.0),
        ({"data": "miniimagenet", "pretrain": True}, 0.1),
    ],
)
def test_c_init_learns_slower_from_trained_weights(flags: dict, expected: float) -> None:
    from attnopt.config import resolve

    assert resolve({"data_root": "/d", **flags}).init_lr_scale == expected


def test_a_run_from_weights_starts_c_init_slower_and_keeps_that_on_resume(
    pretrained: tuple[Path, Path],
) -> None:
    from attnopt.api import train_config
    from attnopt.config import Saved, resolve

    data, path = pretrained
    flags = {"init": str(path), "data": "folder", "data_root": str(data)}
    assert train_config(flags).init_lr_scale == 0.1
    assert train_config({**flags, "n_shot": 1}).init_lr_scale == 1.0
    older = replace(train_config(flags), init_lr_scale=1.0)  # a run from before this default
    resumed = Saved(older, path="ckpt.pt", run_dir="run")
    assert resolve({"resume": "ckpt.pt"}, saved=resumed).init_lr_scale == 1.0


def test_a_run_from_weights_does_not_pretrain(pretrained: tuple[Path, Path]) -> None:
    from attnopt.api import train_config

    data, path = pretrained
    config = train_config({"init": str(path), "data": "folder", "data_root": str(data)})
    assert config.pretrain is False and config.init == str(path)


@pytest.mark.parametrize(
    ("extra", "culprit"),
    [
        (["--init", "{ckpt}"], "--pretrain and --init exclude each other"),
        (["--backbone", "resnet12"], "--backbone conv4 or --no-pretrain"),
    ],
)
def test_pretrain_where_it_cannot_run_is_an_error_line(
    extra: list[str], culprit: str, pretrained: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    data, path = pretrained
    args = [a.replace("{ckpt}", str(path)) for a in extra]
    assert main(["train", *tiny_flags(data, tmp_path / "run"), "--pretrain", *args]) == 2
    assert culprit in error_line(capsys)
    assert not (tmp_path / "run").exists()
