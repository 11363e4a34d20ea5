"""CIFAR-100's classes and super-classes, and the few-shot splits of CIFAR-FS and FC100.

These are published facts, written here as data:

- CIFAR-100 (Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009): 100
  classes in 20 super-classes of 5, as the ``meta`` file of its python version names them.
  A class's label is its index in alphabetical order (:data:`FINE_NAMES`).
- CIFAR-FS (Bertinetto, Henriques, Torr & Vedaldi, "Meta-learning with differentiable
  closed-form solvers", ICLR 2019): 64/16/20 classes drawn at random, from the split files of
  the authors' release.
- FC100 (Oreshkin, Rodríguez & Lacoste, "TADAM: Task dependent adaptive metric for improved
  few-shot learning", NeurIPS 2018): 12/4/4 super-classes (60/20/20 classes), so that test
  classes share no super-class with training classes.
"""

from __future__ import annotations

SUPERCLASSES: dict[str, tuple[str, ...]] = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}
FINE_NAMES: tuple[str, ...] = tuple(sorted(c for cs in SUPERCLASSES.values() for c in cs))
COARSE_NAMES: tuple[str, ...] = tuple(sorted(SUPERCLASSES))

_CIFAR_FS_VAL = (
    "beaver", "otter", "flatfish", "shark", "lamp", "television", "beetle", "butterfly", "sea",
    "camel", "cattle", "crab", "crocodile", "maple_tree", "motorcycle", "tractor",
)  # fmt: skip
_CIFAR_FS_TEST = (
    "whale", "poppy", "rose", "sweet_pepper", "telephone", "bed", "table", "wardrobe",
    "leopard", "plain", "chimpanzee", "fox", "snail", "worm", "baby", "man", "woman",
    "bicycle", "pickup_truck", "rocket",
)  # fmt: skip
# Class names per split.
CIFAR_FS: dict[str, tuple[str, ...]] = {
    "train": tuple(c for c in FINE_NAMES if c not in _CIFAR_FS_VAL + _CIFAR_FS_TEST),
    "val": tuple(sorted(_CIFAR_FS_VAL)),
    "test": tuple(sorted(_CIFAR_FS_TEST)),
}

# Super-class names per split.
FC100_SUPERCLASSES: dict[str, tuple[str, ...]] = {
    "train": (
        "fish", "flowers", "food_containers", "fruit_and_vegetables",
        "household_electrical_devices", "household_furniture", "large_man-made_outdoor_things",
        "large_natural_outdoor_scenes", "reptiles", "trees", "vehicles_1", "vehicles_2",
    ),
    "val": (
        "large_carnivores", "large_omnivores_and_herbivores", "non-insect_invertebrates",
        "small_mammals",
    ),
    "test": ("aquatic_mammals", "insects", "medium_mammals", "people"),
}  # fmt: skip
# Class names per split.
FC100: dict[str, tuple[str, ...]] = {
    split: tuple(sorted(c for s in supers for c in SUPERCLASSES[s]))
    for split, supers in FC100_SUPERCLASSES.items()
}
