"""RobustBench's classifiers as this project's frozen classifier: `robustbench:<model>[:<threat>]`.

`robustbench:Standard` is the paper's frozen CIFAR-10 classifier (RobustBench's standard
WideResNet-28-10); any other model of RobustBench's zoo is named the same way, with its threat
model (Linf by default, or L2, corruptions). Weights come through `robustbench.utils.load_model`
into the project's cache (`<cache>/robustbench/<dataset>/<threat>/<model>.pt`, RobustBench's own
layout, so a checkpoint copied there by hand is used offline). The models take [0, 1] images and
normalize inside; they are wrapped in `Classifier` with an identity `Normalize`.

RobustBench 1.1.1 from PyPI cannot be imported whole: its `__init__` imports `autoattack.state`,
which the `pyautoattack` package it depends on does not have (RobustBench's own instructions
install AutoAttack from its repository), and `pkg_resources`, which setuptools no longer ships.
Only `robustbench.utils` and the model zoo are needed here, so when the package's `__init__`
fails on one of those they are imported without it.
"""

import importlib
import importlib.metadata
import importlib.util
import sys
import types
from pathlib import Path

from torch import nn

from atop_core.config import settings
from atop_core.nets.classifiers import Classifier, Normalize

PREFIX = "robustbench:"
THREATS = ("Linf", "L2", "corruptions")
EXTRA = "pip install 'atop-core[robustbench]'"
INIT_ONLY = ("autoattack", "pkg_resources")  # what the package's __init__ alone imports
# RobustBench's datasets by (classes, image size): ImageNette is not among them
DATASETS = {(10, 32): "cifar10", (100, 32): "cifar100", (1000, 224): "imagenet"}


class RobustBenchUnavailable(RuntimeError):
    """A RobustBench model cannot be had here (package missing, or weights not downloadable)."""


def is_robustbench(arch: str) -> bool:
    return arch.startswith(PREFIX)


def parse(arch: str) -> tuple[str, str]:
    """`robustbench:<model>[:<threat>]` -> (model, threat), refused clearly when malformed."""
    name, _, threat = arch.removeprefix(PREFIX).partition(":")
    threat = threat or "Linf"
    if not is_robustbench(arch) or not name or threat not in THREATS:
        raise ValueError(
            f"{arch!r} is not a RobustBench classifier name: use robustbench:<model>[:<threat>], "
            f"threat one of {', '.join(THREATS)} (e.g. robustbench:Standard)"
        )
    return name, threat


def installed() -> bool:
    """Whether RobustBench itself is installed: torchattacks 3.5.1's wheel ships an old copy of
    its package (no distribution metadata, an older model zoo), which does not count."""
    try:
        importlib.metadata.version("robustbench")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _utils() -> types.ModuleType:
    """`robustbench.utils`, imported without the package's `__init__` when that fails."""
    if not installed():
        raise RobustBenchUnavailable(
            f"RobustBench is not installed; it is an optional extra: {EXTRA} (a `robustbench` "
            "importable without it is the old copy inside torchattacks' wheel)"
        )
    try:
        return importlib.import_module("robustbench.utils")
    except ModuleNotFoundError as err:
        if (err.name or "").partition(".")[0] not in INIT_ONLY:
            raise
    spec = importlib.util.find_spec("robustbench")
    sys.modules.pop("robustbench", None)
    package = types.ModuleType("robustbench")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["robustbench"] = package
    return importlib.import_module("robustbench.utils")


def dataset_of(num_classes: int, image_size: int) -> str:
    try:
        return DATASETS[(num_classes, image_size)]
    except KeyError:
        raise ValueError(
            f"RobustBench has no classifiers for {num_classes} classes at {image_size} px: it "
            "covers CIFAR-10, CIFAR-100 (32 px) and ImageNet"
        ) from None


def _zoo_entry(name: str, threat: str, dataset: str) -> dict:
    utils = _utils()
    enums = importlib.import_module("robustbench.model_zoo.enums")
    models = utils.all_models[enums.BenchmarkDataset(dataset)][enums.ThreatModel(threat)]
    if name not in models:
        raise ValueError(
            f"RobustBench has no {dataset} {threat} model {name!r}; known include: "
            f"{', '.join(sorted(models)[:8])}, ..."
        )
    return models[name]


def _wrapped(net: nn.Module) -> Classifier:
    normalize = Normalize()
    normalize.set_identity()  # RobustBench's models normalize inside, on [0, 1] input
    return Classifier(normalize, net)


def build(arch: str, num_classes: int, image_size: int) -> Classifier:
    """The named model's architecture, untrained (weights then come from a defense file)."""
    name, threat = parse(arch)
    return _wrapped(_zoo_entry(name, threat, dataset_of(num_classes, image_size))["model"]())


def model_dir() -> Path:
    return settings().cache_dir / "robustbench"


def load(arch: str, num_classes: int, image_size: int) -> Classifier:
    """The named model with RobustBench's weights, from the cache or downloaded into it."""
    name, threat = parse(arch)
    dataset = dataset_of(num_classes, image_size)
    _zoo_entry(name, threat, dataset)  # refuse unknown names before any download
    where = model_dir() / dataset / threat / f"{name}.pt"
    cached = where.exists()
    try:
        net = _utils().load_model(name, model_dir=model_dir(), dataset=dataset, threat_model=threat)
    except Exception as err:  # gdown's and requests' errors share no base class
        if cached:
            raise ValueError(f"{where} does not hold RobustBench's {name}: {err}") from None
        where.unlink(missing_ok=True)  # a partial download would be taken for the model
        raise RobustBenchUnavailable(
            f"cannot download RobustBench's {dataset} {threat} model {name} ({err}). Offline, put "
            f"its checkpoint at {where} (RobustBench's model-directory layout) and rerun"
        ) from None
    return _wrapped(net)
