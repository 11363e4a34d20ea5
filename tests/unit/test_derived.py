"""Each derived default's help text names what its rule computes, and resolve applies it."""

from __future__ import annotations

import dataclasses

import pytest

from attnopt.cli.commands import _help
from attnopt.config import DERIVED, Config, resolve

# (setting, the other settings, the default computed, the words of the help text naming it)
CASES = [
    ("epoch", {"n_shot": 1}, 12, "12 for 1-shot"),
    ("epoch", {"n_shot": 5}, 8, "8"),
    ("batch_size", {"n_class": 5, "n_shot": 5}, 25, "N*K"),
    ("batch_size", {"n_class": 3, "n_shot": 2}, 6, "N*K"),
    ("width", {"backbone": "conv4"}, 32, "32 for conv4"),
    ("width", {"backbone": "resnet12"}, 64, "64 for resnet12"),
    ("adapt", {"backbone": "conv4"}, "all", "all for conv4"),
    ("adapt", {"backbone": "resnet12"}, "head", "head for resnet12"),
    ("init_lr_scale", {"pretrain": True, "n_shot": 5}, 0.1, "0.1 when c_I starts from trained"),
    ("init_lr_scale", {"init": "c.pt", "n_shot": 5}, 0.1, "--init) and K > 1"),
    ("init_lr_scale", {"pretrain": True, "n_shot": 1}, 1.0, "else 1"),
    ("init_lr_scale", {"pretrain": False, "n_shot": 5}, 1.0, "else 1"),
    ("pretrain", {"data": "folder"}, True, "on for --data folder with --backbone conv4"),
    ("pretrain", {"data": "folder", "backbone": "resnet12"}, False, "with --backbone conv4"),
    ("pretrain", {"data": "folder", "init": "c.pt"}, False, "off with --init"),
    ("pretrain", {"data": "glyphs"}, False, "on for --data folder"),
]


def test_every_derived_default_has_cases() -> None:
    assert {name for name, *_ in CASES} == set(DERIVED)


@pytest.mark.parametrize(("name", "values", "expected", "words"), CASES)
def test_the_text_names_what_the_rule_computes(
    name: str, values: dict, expected: object, words: str
) -> None:
    assert words in DERIVED[name].text
    assert DERIVED[name].rule({"data": "glyphs", **values}) == expected
    field = {f.name: f for f in dataclasses.fields(Config)}[name]
    assert f"(default: {DERIVED[name].text})" in _help(field, "train")
    if "init" not in values:  # --init needs a checkpoint
        flags = {**values, "data_root": "/d"}
        assert getattr(resolve(flags), name) == expected
