"""The method's chain for one dataset and profile: classifier -> purifier pretraining -> AToP.

Every artifact is named by a hash of the configuration that made it (and of its inputs'), written
under `checkpoints/<profile>/<dataset>/`, and skipped when already complete, so a rerun resumes
where the last one stopped. RT3 has no training recipe of its own (the authors had none either):
its defenses reuse the purifier trained with RT2, whose noise and masks RT3 applies N times.

Under torchrun every rank runs the chain (each stage's `fit` is data-parallel); rank 0 alone
evaluates and writes the defenses, and the others get what it returns (`distributed.on_main`).
"""

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from atop_core import distributed
from atop_core.config import (
    ClassifierConfig,
    Profile,
    TransformConfig,
    as_dict,
    config_hash,
    settings,
)
from atop_core.data import DATASETS, ImageTensorDataset, eval_subset, load_dataset, shrink
from atop_core.defense import DefendedModel, current_sidecar, freeze, save_defense
from atop_core.io import write_json
from atop_core.nets import robustbench
from atop_core.nets.classifiers import build_classifier, load_external_state_dict
from atop_core.nets.purifiers import build_discriminator, build_purifier
from atop_core.train import (
    TrainState,
    accuracy,
    classifier_state,
    classifier_step,
    epoch_batches,
    finetune_inputs,
    finetune_step,
    fit,
    initial_weights,
    pretrain_step,
    purifier_layout,
    purifier_state,
    step_seed,
)
from atop_core.transforms import RandomTransform

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    """uint8 images (N, C, H, W) and labels, held in memory."""

    images: Tensor
    labels: Tensor


@dataclass(frozen=True)
class DataBundle:
    name: str
    train: ImageTensorDataset
    eval: Split  # the fixed evaluation subset
    num_classes: int
    image_size: int

    @property
    def key(self) -> str:
        """The dataset as checkpoint names see it: its name, and the size when shrunk."""
        native = DATASETS.get_entry(self.name).image_size
        return self.name if self.image_size == native else f"{self.name}@{self.image_size}px"

    def train_subset(self, n: int, seed: int) -> Split:
        """The first `n` images of a seeded shuffle of the train split (all of it when n is 0)."""
        if not n or n >= len(self.train):
            return Split(self.train.images, self.train.labels)
        idx = epoch_batches(len(self.train), len(self.train), seed, epoch=-1)[0][:n]
        return Split(self.train.images[idx], self.train.labels[idx])


def load_bundle(profile: Profile, dataset: str) -> DataBundle:
    profile = profile.for_dataset(dataset)
    size = profile.data.max_size
    train, test = (shrink(load_dataset(dataset, split), size) for split in ("train", "test"))
    sub, _ = eval_subset(dataset, test, profile.data.n_eval, profile.data.eval_seed)
    return DataBundle(
        dataset, train, Split(sub.images, sub.labels), len(train.classes), train.images.shape[-1]
    )


def stage_dir(profile: Profile, dataset: str) -> Path:
    return settings().checkpoints_dir / profile.name / dataset


def training_transform(profile: Profile, rt: str) -> TransformConfig:
    """The transform a purifier for defense `rt` is trained with (RT3 reuses RT2's; see above)."""
    return dataclasses.replace(profile.transform, kind="rt2" if rt == "rt3" else rt)


def defense_transform(profile: Profile, rt: str) -> TransformConfig:
    return dataclasses.replace(profile.transform, kind=rt)


def _hash(*parts: object) -> str:
    return config_hash(
        _Parts(tuple(as_dict(p) if dataclasses.is_dataclass(p) else p for p in parts))
    )


@dataclass(frozen=True)
class _Parts:
    parts: tuple


# --- stage 1: the classifier ---------------------------------------------------------------------


def _classifier_cfg(profile: Profile, adv: str | None) -> ClassifierConfig:
    """The classifier's recipe, or the adversarially trained baseline's when `adv` is given."""
    cfg = profile.classifier
    if not adv or adv == cfg.adv:
        return cfg
    if robustbench.is_robustbench(adv):  # a RobustBench model is the baseline, as it is
        return dataclasses.replace(cfg, arch=adv, arch_large=adv)
    return dataclasses.replace(cfg, adv=adv, epochs=cfg.adv_epochs or cfg.epochs)


def classifier_path(profile: Profile, data: DataBundle, adv: str | None = None) -> Path:
    cfg = _classifier_cfg(profile, adv)
    arch = cfg.arch_for(data.image_size)
    return stage_dir(profile, data.name) / f"classifier-{arch}-{cfg.adv}-{_hash(cfg, data.key)}.pt"


def get_classifier(
    profile: Profile, data: DataBundle, device: torch.device, adv: str | None = None
) -> nn.Module:
    """The trained, frozen classifier (trained now unless a complete checkpoint exists), or the
    user's weights when `weights` is set. `adv` picks an adversarially trained baseline."""
    cfg = _classifier_cfg(profile, adv)
    arch = cfg.arch_for(data.image_size)
    if robustbench.is_robustbench(arch) and cfg.adv == "none":  # its weights: nothing to train
        model = robustbench.load(arch, data.num_classes, data.image_size)
        model.flip_average = cfg.flip_average
        return freeze(model.to(device))
    width = {"width": cfg.width} if cfg.width else {}
    with initial_weights(cfg.seed):
        model = build_classifier(
            cfg.arch_for(data.image_size),
            data.num_classes,
            data.image_size,
            flip_average=cfg.flip_average,
            **width,
        )
    model = model.to(device, memory_format=torch.channels_last)
    if cfg.weights:
        return freeze(load_external_state_dict(model, cfg.weights, map_location=device))
    train = data.train_subset(cfg.train_subset, cfg.seed)
    steps = len(epoch_batches(len(train.images), cfg.batch_size, cfg.seed, 0))
    state = classifier_state(model, cfg, steps)
    path = classifier_path(profile, data, adv)
    step = classifier_step(state, cfg)
    _fit_stage(
        f"classifier/{cfg.adv}",
        state,
        step,
        train,
        cfg,
        path,
        device,
        lambda: {"eval_acc": accuracy(model, *_eval(data), device)},
    )
    return freeze(model)


def _eval(data: DataBundle) -> tuple[Tensor, Tensor]:
    return data.eval.images, data.eval.labels


# --- stages 2 and 3: purifier pretraining and AToP fine-tuning ------------------------------------


def _purifier_models(profile: Profile, kind: str, data: DataBundle, device: torch.device):
    cfg = dataclasses.replace(profile.purifier, kind=kind)
    size = cfg.work_size or data.image_size
    with initial_weights(cfg.seed):
        purifier = build_purifier(
            kind, width=cfg.width, image_size=data.image_size, work_size=cfg.work_size
        )
        disc = build_discriminator(width=cfg.width, image_size=size) if kind == "gan" else None
    purifier = purifier.to(device, memory_format=purifier_layout(purifier))
    return cfg, purifier, None if disc is None else disc.to(device)


def _defense_acc(
    classifier: nn.Module,
    purifier: nn.Module,
    t_cfg: TransformConfig,
    data: DataBundle,
    device: torch.device,
    seed: int,
) -> float:
    defense = DefendedModel(classifier, purifier, RandomTransform(t_cfg, seed=seed))
    return accuracy(defense, *_eval(data), device, batch_size=128)


def _fit_purifier(
    name: str,
    state: TrainState,
    step,
    train: Split,
    cfg,
    path: Path,
    classifier: nn.Module,
    t_cfg: TransformConfig,
    data: DataBundle,
    device: torch.device,
) -> None:
    """`fit` a purifier stage; each epoch's log gets the defense's clean accuracy (one draw)."""
    purifier = state.models["purifier"]
    _fit_stage(
        name,
        state,
        step,
        train,
        cfg,
        path,
        device,
        lambda: {"eval_acc": _defense_acc(classifier, purifier, t_cfg, data, device, 0)},
    )


def _fit_stage(
    name: str, state: TrainState, step, train: Split, cfg, path: Path, device: torch.device, eval_fn
) -> None:
    """`fit` with the epochs, batch size and seed of a stage's config."""
    fit(
        name,
        state,
        step,
        train.images,
        train.labels,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        ckpt_path=path,
        device=device,
        eval_fn=eval_fn,
    )


def pretrain_path(profile: Profile, kind: str, rt: str, data: DataBundle) -> Path:
    cfg = dataclasses.replace(profile.purifier, kind=kind)
    t_cfg = training_transform(profile, rt)
    return stage_dir(profile, data.name) / (
        f"purifier-{kind}-{t_cfg.kind}-pretrain-{_hash(cfg, t_cfg, data.key)}.pt"
    )


def get_pretrained(
    profile: Profile,
    kind: str,
    rt: str,
    data: DataBundle,
    classifier: nn.Module,
    device: torch.device,
) -> TrainState:
    """Purifier (and discriminator) after pretraining on clean data with L_df."""
    cfg, purifier, disc = _purifier_models(profile, kind, data, device)
    t_cfg = training_transform(profile, rt)
    state = purifier_state(purifier, disc, cfg.lr, cfg.betas)
    train = data.train_subset(cfg.train_subset, cfg.seed)
    transform = RandomTransform(t_cfg, seed=cfg.seed + 1)
    name, path = f"pretrain {kind}/{t_cfg.kind}", pretrain_path(profile, kind, rt, data)
    step = pretrain_step(state, transform, cfg)
    _fit_purifier(name, state, step, train, cfg, path, classifier, t_cfg, data, device)
    return state


def finetune_path(profile: Profile, kind: str, rt: str, data: DataBundle) -> Path:
    pre = pretrain_path(profile, kind, rt, data).stem
    cls = classifier_path(profile, data).stem
    return stage_dir(profile, data.name) / (
        f"purifier-{kind}-{training_transform(profile, rt).kind}-atop-"
        f"{_hash(profile.finetune, pre, cls)}.pt"
    )


def get_finetuned(
    profile: Profile,
    kind: str,
    rt: str,
    data: DataBundle,
    classifier: nn.Module,
    device: torch.device,
) -> TrainState:
    """AToP: the pretrained purifier fine-tuned through the frozen classifier."""
    cfg = profile.finetune
    pretrained = get_pretrained(profile, kind, rt, data, classifier, device)
    p_cfg, purifier, disc = _purifier_models(profile, kind, data, device)
    purifier.load_state_dict(pretrained.models["purifier"].state_dict())
    if disc is not None:
        disc.load_state_dict(pretrained.models["discriminator"].state_dict())
    state = purifier_state(purifier, disc, cfg.lr, p_cfg.betas)
    t_cfg = training_transform(profile, rt)
    transform = RandomTransform(t_cfg, seed=cfg.seed + 2)
    attack_model = (
        classifier
        if cfg.attack_on == "classifier"
        else DefendedModel(classifier, purifier, RandomTransform(t_cfg, seed=cfg.seed + 3))
    )

    craft = finetune_inputs(cfg, attack_model)

    def make_adversarial(x: Tensor, y: Tensor, g: torch.Generator) -> Tensor:
        purifier.eval()
        if isinstance(attack_model, DefendedModel):
            attack_model.transform.seed(step_seed(g))
        return craft(x, y, g)

    train = data.train_subset(cfg.train_subset, cfg.seed)
    step = finetune_step(state, transform, classifier, cfg, p_cfg.gan_weight, make_adversarial)
    name, path = f"atop {kind}/{t_cfg.kind}", finetune_path(profile, kind, rt, data)
    _fit_purifier(name, state, step, train, cfg, path, classifier, t_cfg, data, device)
    return state


# --- the whole chain -----------------------------------------------------------------------------


def defense_path(profile: Profile, dataset: str, kind: str, rt: str, atop: bool) -> Path:
    return stage_dir(profile, dataset) / f"defense-{kind}-{rt}-{'atop' if atop else 'plain'}.pt"


def train_chain(profile: Profile, dataset: str, device: torch.device) -> list[dict]:
    """Train (or reuse) every stage for `dataset` and save the defenses: the bare classifier, each
    adversarially trained baseline, and one per purifier × transform × AToP. Returns their
    sidecars, each with its clean accuracy on the fixed evaluation subset."""
    profile = profile.for_dataset(dataset)
    data = load_bundle(profile, dataset)
    classifier = get_classifier(profile, data, device)
    cls_acc = distributed.on_main(lambda: accuracy(classifier, *_eval(data), device))
    saved = [_save_classifier_defense(profile, data, "plain", classifier, cls_acc, cls_acc)]
    for adv in profile.baselines:
        robust = get_classifier(profile, data, device, adv=adv)
        acc = distributed.on_main(lambda robust=robust: accuracy(robust, *_eval(data), device))
        saved.append(_save_classifier_defense(profile, data, adv, robust, cls_acc, acc))
    for kind in profile.purifiers:
        for rt in profile.transforms:
            for atop in (False, True):
                saved.append(
                    _purified_defense(profile, data, kind, rt, atop, classifier, cls_acc, device)
                )
    if distributed.is_main():
        write_json(
            stage_dir(profile, dataset) / "defenses.json",
            [{k: v for k, v in s.items() if k != "training_log"} for s in saved],
        )
    distributed.barrier()  # every file written before any rank goes on
    return saved


def _common(data: DataBundle) -> dict:
    return {"dataset": data.name, "num_classes": data.num_classes, "image_size": data.image_size}


def _save_classifier_defense(
    profile: Profile, data: DataBundle, adv: str, model: nn.Module, cls_acc: float, acc: float
) -> dict:
    """The bare classifier ("plain") or an adversarially trained baseline as a defense."""
    at = adv.replace(":", "-")  # robustbench:<model> baselines
    name = "defense-none-none-plain.pt" if adv == "plain" else f"defense-none-none-at-{at}.pt"
    cfg = profile.classifier if adv == "plain" else _classifier_cfg(profile, adv)
    return distributed.on_main(
        lambda: save_defense(
            stage_dir(profile, data.name) / name,
            model,
            None,
            classifier_cfg=cfg,
            purifier_cfg=None,
            transform_cfg=dataclasses.replace(profile.transform, kind="none"),
            atop=False,
            **_common(data),
            extra=_extra(profile, cls_acc, acc, data, None, []),
        )
    )


def _purified_defense(
    profile: Profile,
    data: DataBundle,
    kind: str,
    rt: str,
    atop: bool,
    classifier: nn.Module,
    cls_acc: float,
    device: torch.device,
) -> dict:
    """The classifier behind purifier `kind` with transform `rt`, pretrained or (atop)
    fine-tuned; a saved defense made from unchanged checkpoints is reused as it is."""
    path = defense_path(profile, data.name, kind, rt, atop)
    made_from = [
        classifier_path(profile, data).stem,
        (finetune_path if atop else pretrain_path)(profile, kind, rt, data).stem,
        as_dict(defense_transform(profile, rt)),
    ]
    # rank 0 decides for every rank: another might read the sidecar as rank 0 rewrites it
    done = distributed.on_main(lambda: current_sidecar(path, "made_from", made_from))
    if done is not None:
        return done  # its checkpoints are unchanged: skip the re-evaluation
    get = get_finetuned if atop else get_pretrained
    state = get(profile, kind, rt, data, classifier, device)
    purifier = state.models["purifier"]
    t_cfg = defense_transform(profile, rt)
    acc = distributed.on_main(lambda: _defense_acc(classifier, purifier, t_cfg, data, device, 0))
    finetune = profile.finetune if atop else None
    return distributed.on_main(
        lambda: save_defense(
            path,
            classifier,
            purifier,
            classifier_cfg=profile.classifier,
            transform_cfg=t_cfg,
            atop=atop,
            purifier_cfg=dataclasses.replace(profile.purifier, kind=kind),
            **_common(data),
            extra={
                **_extra(profile, cls_acc, acc, data, finetune, state.log),
                "made_from": made_from,
            },
        )
    )


def _extra(profile: Profile, cls_acc: float, acc: float, data: DataBundle, finetune, log) -> dict:
    return {
        "profile": profile.name,
        "classifier_eval_acc": cls_acc,
        "eval_acc_single_draw": acc,
        "n_eval": len(data.eval.labels),
        "training_log": log,
        "finetune": dataclasses.asdict(finetune) if finetune else None,
    }
