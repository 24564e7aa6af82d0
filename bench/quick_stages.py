"""The quick profile's stages, one batch each at the profile's own batch sizes, in one process
holding the dataset as `run_all.sh` does: the memory probe's stand-in for a full quick run, whose
peak is the largest stage's (later batches of a stage repeat the same allocations)."""

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor

from atop_core.attacks import AttackConfig
from atop_core.config import get_profile
from atop_core.data import DataFormatError, DataNotFoundError, load_dataset
from atop_core.defense import DefendedModel, freeze
from atop_core.harness import evaluate
from atop_core.nets.classifiers import build_classifier
from atop_core.nets.purifiers import build_discriminator, build_purifier
from atop_core.train import (
    classifier_state,
    classifier_step,
    finetune_inputs,
    finetune_step,
    pretrain_step,
    purifier_state,
)
from atop_core.transforms import RandomTransform

CIFAR_TRAIN, CIFAR_TEST = 50_000, 10_000


def _cifar10() -> tuple[Tensor, Tensor, Tensor, Tensor, str]:
    """CIFAR-10 as uint8 tensors: the real (cached) copy when one is found, else the same shapes
    filled with noise (memory depends on the shapes only)."""
    try:
        train, test = load_dataset("cifar10", "train"), load_dataset("cifar10", "test")
        return train.images, train.labels, test.images, test.labels, train.source
    except (DataNotFoundError, DataFormatError):
        g = torch.Generator().manual_seed(0)
        make = lambda n: torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)  # noqa: E731
        labels = lambda n: torch.randint(0, 10, (n,), generator=g)  # noqa: E731
        return (
            make(CIFAR_TRAIN),
            labels(CIFAR_TRAIN),
            make(CIFAR_TEST),
            labels(CIFAR_TEST),
            "synthetic",
        )


def quick_profile_stages(kind: str = "gan") -> dict[str, Callable[[], None]]:
    """Stage name -> a call that runs one batch of it; later stages use earlier ones' nets."""
    p, device, held = get_profile("quick"), torch.device("cpu"), {}
    g = torch.Generator().manual_seed(0)

    def batch(n: int, split: str = "train") -> tuple[Tensor, Tensor]:
        images, labels = held[split]
        return images[:n].float().div_(255), labels[:n]

    def data() -> None:
        xtr, ytr, xte, yte, source = _cifar10()
        held.update(train=(xtr, ytr), test=(xte, yte), source=source)

    def classifier(adv: str) -> Callable[[], None]:
        def stage() -> None:
            cfg = dataclasses.replace(p.classifier, adv=adv)
            model = build_classifier(cfg.arch, 10, 32, flip_average=cfg.flip_average)
            model = model.to(memory_format=torch.channels_last)
            step = classifier_step(classifier_state(model, cfg, steps_per_epoch=1), cfg)
            step(*batch(cfg.batch_size), g)
            held.setdefault("classifier", freeze(model))

        return stage

    def pretrain() -> None:
        cfg = dataclasses.replace(p.purifier, kind=kind)
        purifier = build_purifier(kind, width=cfg.width, image_size=32)
        disc = build_discriminator(width=cfg.width, image_size=32) if kind == "gan" else None
        state = purifier_state(purifier, disc, cfg.lr, cfg.betas)
        transform = RandomTransform(dataclasses.replace(p.transform, kind="rt2"))
        pretrain_step(state, transform, cfg)(*batch(cfg.batch_size), g)
        held["state"] = state

    def finetune() -> None:
        cfg, state, f = p.finetune, held["state"], held["classifier"]
        transform = RandomTransform(dataclasses.replace(p.transform, kind="rt2"))
        adv = finetune_inputs(cfg, f)
        step = finetune_step(state, transform, f, cfg, p.purifier.gan_weight, adv)
        step(*batch(cfg.batch_size), g)

    def evaluation() -> None:
        e = p.evaluation
        model = DefendedModel(
            held["classifier"], held["state"].models["purifier"], RandomTransform(p.transform)
        )
        images, labels = held["test"]
        attack = AttackConfig(name="pgd-eot", steps=1, eot=e.eot)
        n = e.batch_size
        evaluate(model, attack, images[:n], labels[:n], "whole-model", device, e.draws, n)

    return {
        "data": data,
        "classifier": classifier("none"),
        f"classifier {p.baselines[0]}": classifier(p.baselines[0]),
        f"pretrain {kind}": pretrain,
        f"finetune {kind}": finetune,
        f"evaluate {kind} (eot {p.evaluation.eot}, draws {p.evaluation.draws})": evaluation,
    }
