"""What the notebooks and `run_all.sh` call: checked parameters, the attack suites behind each
paper table at a profile's budgets, and running them into records.

Suites name the paper's budgets (PGD-1000, CW-100, ...); a reduced profile caps the steps
(`EvalConfig.step_cap`) and the images (`EvalConfig.n_table`), and every record says what ran.
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor, nn

from atop_core import plots
from atop_core.allocator import tune_malloc
from atop_core.analysis import purify_examples
from atop_core.attacks import ATTACKS, AttackConfig, run_attack
from atop_core.claims import (
    CLEAN_MARGIN,
    MIN_IMAGES_EXPENSIVE,
    Arm,
    Comparison,
    decide,
    display,
    find,
    randomness_split,
)
from atop_core.config import (
    PURIFIER_KINDS,
    TRANSFORM_KINDS,
    Profile,
    get_profile,
    resolve_device,
    settings,
)
from atop_core.data import DATASETS, unavailable_reason
from atop_core.defense import DefendedModel, save_transform_variant
from atop_core.evaluation import evaluate_defense
from atop_core.indicators import INDICATORS, mean_loss_curve
from atop_core.io import write_bytes_atomic
from atop_core.jupyter import show_figures_inline
from atop_core.pipeline import (
    DataBundle,
    defense_path,
    defense_transform,
    get_classifier,
    get_finetuned,
    get_pretrained,
    stage_dir,
    train_chain,
)
from atop_core.plots import save_figure
from atop_core.records import load_records, worst_case
from atop_core.report import claims_blocks, markdown_table, update_readme
from atop_core.tables import build_table, load_reference, records_frame, wide_tables
from atop_core.train import accuracy
from atop_core.transforms import RandomTransform

PROTOCOL_ATTACKS = {  # the whole model is random: its attacks average gradients over EOT draws
    "whole-model": {"pgd": "pgd-eot", "pgd-l2": "pgd-eot-l2", "autoattack": "autoattack-rand"},
    "classifier-only": {"pgd": "pgd", "pgd-l2": "pgd-l2", "autoattack": "autoattack"},
}
# Attacks that average their loss's gradient over transform draws (C&W stays at one draw per
# step: at EOT 4 it would cost the quick ablation minutes; README labels its cells weak).
EOT_ATTACKS = ("pgd-eot", "pgd-eot-l2", "bpda-eot", "eot-pgd", "apgd", "apgd-l2", "stadv")
EOT_ATTACKS += ("autoattack-rand", "autoattack-rand-l2")
# The ablation tables' columns at the paper's budgets: (column, attack, steps).
ABLATION = (
    ("clean", "clean", 1),
    ("fgsm", "fgsm", 1),
    ("pgd-10", "pgd", 10),
    ("pgd-20", "pgd", 20),
    ("cw-100", "cw-l2", 100),
    ("pgd-1000", "pgd", 1000),
    ("autoattack", "autoattack", 100),
)
# Seen (the L∞ budget AT trained on) and unseen threat models (L2 0.5, StAdv 0.05: DiffPure's).
GENERALIZATION = (("linf", "pgd", 20), ("l2", "pgd-l2", 20), ("stadv", "stadv", 20))
STANDARD_CASE_ATTACKS = ("autoattack", "autoattack-rand")
# C4's rows: (label, attack, whether adversarial training is the claimed winner)
GENERALIZATION_CLAIMS = (
    ("L∞ PGD, seen", "pgd", True),
    ("L2 PGD, unseen", "pgd-l2", False),
    ("StAdv, unseen", "stadv", False),
)
EPS_SWEEP = (2 / 255, 4 / 255, 8 / 255, 16 / 255)


@dataclass(frozen=True)
class Run:
    """One notebook's checked setting: a profile, a dataset and a device."""

    profile: Profile
    dataset: str
    device: torch.device
    seed: int = 0

    def __repr__(self) -> str:  # the profile by name: its fields fill a screen
        profile, device = self.profile.name, str(self.device)
        return f"Run({profile=}, dataset={self.dataset!r}, {device=}, seed={self.seed})"

    def on(self, dataset: str) -> "Run":
        """The same setting on another dataset of its (named) profile."""
        profile = get_profile(self.profile.name).for_dataset(dataset)
        return Run(profile, dataset, self.device, self.seed)

    def defense(self, purifier: str, transform: str, atop: bool) -> str:
        """A defense's file (from `train_chain`) by its parts; `purifier` none for baselines."""
        return str(defense_path(self.profile, self.dataset, purifier, transform, atop))

    @property
    def checkpoints(self):
        return stage_dir(self.profile, self.dataset)

    @property
    def figures(self):
        return settings().figures_dir(self.profile.name) / self.dataset


def setup(
    profile: str,
    dataset: str,
    device: str = "auto",
    seed: int = 0,
    purifier: str | None = None,
    transform: str | None = None,
) -> Run:
    """Refuse bad notebook parameters in the first cell, naming the value and the choices, and
    have the kernel show the notebook's figures as images (and tune malloc for its work)."""
    show_figures_inline()
    tune_malloc()
    DATASETS.get_entry(dataset)  # unknown dataset: lists the known ones
    if purifier is not None and purifier not in PURIFIER_KINDS:
        raise ValueError(f"unknown purifier {purifier!r}; known: {', '.join(PURIFIER_KINDS)}")
    if transform is not None and transform not in TRANSFORM_KINDS[1:]:
        known = ", ".join(TRANSFORM_KINDS[1:])
        raise ValueError(f"unknown transform {transform!r}; known: {known}")
    return Run(get_profile(profile).for_dataset(dataset), dataset, resolve_device(device), seed)


def attack(profile: Profile, name: str, protocol: str, steps: int = 1, **kw) -> AttackConfig:
    """The attack a suite names (`pgd`, `autoattack`: per protocol), as this profile runs it."""
    return configure(profile, PROTOCOL_ATTACKS[protocol].get(name, name), protocol, steps, **kw)


def configure(
    profile: Profile, name: str, protocol: str, steps: int = 1, eot: int | None = None, **kw
) -> AttackConfig:
    """Attack `name` at the profile's budgets: steps, EOT draws (`eot`, default the profile's)
    and Square's queries capped at reduced profiles; EOT only for attacks on the whole, random
    model."""
    ev = profile.evaluation
    eot = ev.scale_eot(eot or ev.eot) if protocol == "whole-model" and name in EOT_ATTACKS else 1
    if ev.step_cap and "queries" in ATTACKS.get_entry(name).defaults:  # Square's, capped alike
        kw.setdefault("queries", ev.square_queries)
    return AttackConfig(name=name, steps=ev.scale_steps(steps), eot=eot, seed=1, **kw)


def ablation_suite(profile: Profile, protocol: str) -> list[AttackConfig]:
    """The ablation columns; AutoAttack (the submission's column, replaced in the camera-ready by
    CW-100 and PGD-1000) only at full budgets: on 2 CPU cores it alone would take hours."""
    columns = [c for c in ABLATION if c[1] != "autoattack" or not profile.evaluation.step_cap]
    return [attack(profile, name, protocol, steps) for _, name, steps in columns]


def generalization_suite(profile: Profile) -> list[AttackConfig]:
    return [attack(profile, name, "whole-model", steps) for _, name, steps in GENERALIZATION]


def eps_sweep(profile: Profile) -> list[AttackConfig]:
    return [attack(profile, "pgd", "whole-model", 10, eps=eps) for eps in EPS_SWEEP]


def steps_sweep(profile: Profile) -> list[AttackConfig]:
    """PGD-EOT with a quarter, half and all of the profile's steps (EOT fixed)."""
    base = attack(profile, "pgd", "whole-model", profile.evaluation.steps)
    steps = sorted({max(1, base.steps // 4), max(1, base.steps // 2), base.steps})
    return [dataclasses.replace(base, steps=s) for s in steps]


def eot_sweep(profile: Profile) -> list[AttackConfig]:
    """PGD-EOT with 1, half and all of the profile's EOT samples (steps fixed)."""
    base = attack(profile, "pgd", "whole-model", profile.evaluation.steps)
    return [dataclasses.replace(base, eot=e) for e in sorted({1, max(1, base.eot // 2), base.eot})]


def evaluate_suite(
    run: Run,
    defenses: list[str],
    attacks: list[AttackConfig],
    protocol: str = "whole-model",
    n: int | None = None,
    sanity: bool = True,
) -> list[dict]:
    """Records (resumed or computed) for every defense × attack: attacks on `n` images (default:
    the profile's table size), clean accuracy, which is cheap, on all the evaluation images."""
    ev = run.profile.evaluation
    n = n or ev.n_table or None
    return [
        evaluate_defense(
            path,
            run.profile,
            cfg,
            protocol=protocol,
            device=run.device,
            n=None if cfg.name == "clean" else n,
            seed=run.seed,
            sanity=sanity,
        )[0]
        for path in defenses
        for cfg in attacks
    ]


def adaptive_suite(profile: Profile, protocol: str = "whole-model") -> list[AttackConfig]:
    """The headline comparison: full-gradient PGD-EOT and BPDA+EOT on the whole
    model, or PGD on the bare classifier, all at the profile's steps and EOT."""
    steps = profile.evaluation.steps
    if protocol == "classifier-only":
        return [attack(profile, "pgd", protocol, steps)]
    return [attack(profile, "pgd", protocol, steps), attack(profile, "bpda-eot", protocol, steps)]


def preliminary_pgd_eot(profile: Profile) -> AttackConfig:
    """The rebuttal's first PGD+EOT table's attack: 10 steps, EOT 10, the purifier skipped in
    the gradient (BPDA+EOT here), EOT capped at reduced profiles."""
    return configure(profile, "bpda-eot", "whole-model", 10, eot=10)


def standard_case_suite(profile: Profile) -> list[AttackConfig]:
    """The rebuttal's standard case: AutoAttack standard and rand on the whole model, at the
    profile's steps (the registry suite's records where they exist)."""
    steps = profile.evaluation.steps
    return [configure(profile, name, "whole-model", steps) for name in STANDARD_CASE_ATTACKS]


def calibration_suite(profile: Profile) -> list[AttackConfig]:
    """The authors' training-log attacks on the bare classifier that the ablation lacks: BIM-10
    and EOTPGD-10 (their 2 draws of a deterministic classifier are one: ours runs 1)."""
    return [configure(profile, name, "classifier-only", 10) for name in ("bim", "eot-pgd")]


def registry_suite(profile: Profile) -> list[AttackConfig]:
    """Every attack in the registry once, at the profile's steps (whole-model protocol)."""
    steps = profile.evaluation.steps
    return [configure(profile, name, "whole-model", steps) for name in sorted(ATTACKS)]


def train_defenses(run: Run) -> list[dict]:
    """Every defense of the chain (trained now unless its checkpoints are complete)."""
    return train_chain(run.profile, run.dataset, run.device)


def suite_defenses(run: Run, purifier: str, transform: str) -> list[str]:
    """One purifier without and with AToP, and the bare classifier."""
    return [
        run.defense(purifier, transform, False),
        run.defense(purifier, transform, True),
        run.defense("none", "none", False),
    ]


def ablation_defenses(run: Run, purifier: str) -> list[str]:
    return [run.defense(purifier, rt, atop) for rt in ("rt1", "rt2", "rt3") for atop in (0, 1)]


FIXED_MASK = "-fixed-mask"  # the defense-name suffix the reference's random-vs-fixed table selects


def standard_case_defenses(run: Run, transform: str = "rt2") -> list[str]:
    """Every purifier of the profile without and with AToP (the standard-case and generalization
    tables' rows)."""
    return [run.defense(p, transform, atop) for p in run.profile.purifiers for atop in (0, 1)]


def fixed_mask_defenses(run: Run, purifier: str, transform: str = "rt2") -> list[str]:
    """The purifier without and with AToP, its mask drawn once and kept for every image (the
    rebuttal's fixed-mask ablation); the noise stays random."""
    pair = suite_defenses(run, purifier, transform)[:2]
    return [str(save_transform_variant(path, FIXED_MASK, fixed_mask=True)) for path in pair]


def generalization_defenses(run: Run, transform: str) -> list[str]:
    """The bare classifier, each adversarially trained baseline, every purifier ± AToP."""
    at = [str(run.checkpoints / f"defense-none-none-at-{adv}.pt") for adv in run.profile.baselines]
    return [run.defense("none", "none", False), *at] + standard_case_defenses(run, transform)


def summary(records: list[dict]) -> pd.DataFrame:
    """One line per record: accuracies in %, the single-draw interval and the sanity verdict."""
    rows = []
    for r in records:
        lo, hi = r["interval"]["single"]
        rows.append(
            {
                "defense": r["defense"]["name"],
                "attack": r["attack"]["name"],
                "steps": r["attack"].get("steps"),
                "eot": r["attack"].get("eot"),
                "protocol": r["protocol"],
                "randomness": r.get("randomness", "fresh"),
                "n": r["n"],
                "single %": round(100 * r["accuracy"]["single"], 1),
                "95% interval": f"[{100 * lo:.1f}, {100 * hi:.1f}]",
                "vote %": round(100 * r["accuracy"]["vote"], 1),
                "worst %": round(100 * r["accuracy"]["worst"], 1),
                "unreliable": r["unreliable"],
            }
        )
    return pd.DataFrame(rows)


def worst_case_by_defense(records: list[dict]) -> pd.DataFrame:
    """Per defense, protocol and image list: accuracy against the whole suite
    (`results.worst_case`); clean accuracy, taken on more images, forms its own line."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        key = (r["defense"]["name"], r["protocol"], r["indices"]["sha256"])
        groups.setdefault(key, []).append(r)
    rows = []
    for (name, protocol, _), group in groups.items():
        wc = worst_case(group)
        rows.append(
            {
                "defense": name,
                "protocol": protocol,
                "attacks": len(group),
                "n": wc["n"],
                **{f"{k} %": round(100 * v, 1) for k, v in wc["accuracy"].items()},
                "any unreliable": wc["unreliable"],
            }
        )
    return pd.DataFrame(rows)


def paper_table(run: Run, table_id: str, records: list[dict]) -> list[pd.DataFrame]:
    """A paper table in its layout (paper → ours [interval] (difference)), one frame per block."""
    reference = load_reference()
    long = build_table(table_id, records_frame(records), reference, profile=run.profile.name)
    return [wide for _, wide in wide_tables(long, reference["tables"][table_id])]


def report_path(profile: Profile) -> Path:
    """REPORT.md at the top for real runs; smoke's (a pipeline test) stays under outputs/."""
    home = settings().home
    return (
        settings().outputs_dir("smoke") / "REPORT.md"
        if profile.name == "smoke"
        else home / "REPORT.md"
    )


def not_run_notes(profile: Profile) -> dict[str, str]:
    """Each of the profile's datasets that cannot be loaded here, with the reason."""
    reasons = {name: unavailable_reason(name, brief=True) for name in profile.datasets}
    return {name: f"not run: {reason}" for name, reason in reasons.items() if reason}


# --- small computations the notebooks show ---------------------------------------------------


def clean_accuracy(run: Run, data: DataBundle, **models: nn.Module) -> pd.DataFrame:
    """Clean accuracy (%) of each model on the fixed evaluation images (one draw if random)."""
    images, labels = data.eval.images, data.eval.labels
    return pd.DataFrame(
        [
            {
                "model": name,
                "n": len(labels),
                "accuracy %": round(100 * accuracy(m, images, labels, run.device), 2),
            }
            for name, m in models.items()
        ]
    )


def spread(data: DataBundle, n: int) -> tuple[Tensor, Tensor]:
    """`n` evaluation images spread evenly over the fixed list ([0,1] floats) and their labels:
    the list is sorted by index, and test splits stored by class would make a prefix one class."""
    picks = torch.linspace(0, len(data.eval.labels) - 1, min(n, len(data.eval.labels))).long()
    return data.eval.images[picks].float().div(255), data.eval.labels[picks]


def predictions(data: DataBundle, model: nn.Module, n: int) -> tuple[dict, dict, Tensor]:
    """Spread evaluation images, the model's predictions, the labels (for purified_examples)."""
    x, y = spread(data, n)
    with torch.no_grad():
        logits = model(x.to(next(model.parameters()).device))
    return {"input": x}, {"input": logits.argmax(1).cpu()}, y


def defense_pair(
    run: Run, data: DataBundle, classifier: nn.Module, purifier: str, transform: str
) -> tuple[DefendedModel, DefendedModel]:
    """The defense without and with AToP, from the (cached) pretrained and fine-tuned purifiers."""
    t_cfg = defense_transform(run.profile, transform)
    pair = []
    for get in (get_pretrained, get_finetuned):
        g = get(run.profile, purifier, transform, data, classifier, run.device).models["purifier"]
        pair.append(DefendedModel(classifier, g.eval(), RandomTransform(t_cfg, run.seed)).eval())
    return pair[0], pair[1]


def classifier_adversarials(
    run: Run, data: DataBundle, classifier: nn.Module, n: int, steps: int = 10
) -> tuple[Tensor, Tensor]:
    """Spread evaluation images and their PGD adversarials on the bare classifier."""
    x, y = spread(data, n)
    cfg = AttackConfig(name="pgd", steps=steps, seed=run.seed + 1)
    adv = run_attack(classifier, cfg, x.to(run.device), y.to(run.device))
    return x, adv.cpu()


def adversarial_examples(
    run: Run, data: DataBundle, defense: DefendedModel, n: int
) -> tuple[dict, dict, Tensor]:
    """FGSM images of the bare classifier, purified by one draw of the defense (clean too), the
    classifier's predictions on each, and the labels."""
    x, y = spread(data, n)
    x, y = x.to(run.device), y.to(run.device)
    adv = run_attack(defense.classifier, AttackConfig(name="fgsm", seed=run.seed + 1), x, y)
    images, preds = purify_examples(defense, x, adv, seed=run.seed)
    return {k: v.cpu() for k, v in images.items()}, {k: v.cpu() for k, v in preds.items()}, y.cpu()


ABLATION_TABLES = {"cifar10": "table7_cifar10_ablation", "imagenette": "table8_imagenette_ablation"}


def ablation_table(run: Run, records: list[dict]) -> list[pd.DataFrame] | str:
    """The paper's ablation table for this dataset (Table 7 or 8), or why there is none."""
    if run.dataset not in ABLATION_TABLES:
        return f"the paper has no ablation table for {run.dataset}"
    return paper_table(run, ABLATION_TABLES[run.dataset], records)


def baseline_classifiers(run: Run, data: DataBundle) -> dict[str, nn.Module]:
    """Each adversarially trained baseline of the profile, by its recipe (e.g. `fgsm-rs`)."""
    return {
        f"AT ({adv})": get_classifier(run.profile, data, run.device, adv=adv)
        for adv in run.profile.baselines
    }


# --- the paper's claims (claims.py) ------------------------------------------------------------


def _stem(run: Run, purifier: str, transform: str, atop: bool) -> str:
    return Path(run.defense(purifier, transform, atop)).stem


def claim_comparisons(run: Run, purifier: str = "ae") -> list[Comparison]:
    """The profile's claims (of C1-C6): C1 and C2 for each of its `claim_purifiers`, the rest for
    `purifier` (at the quick profile the AE, the one that purifies at that scale; the row names
    it). Attacks at the profile's steps and EOT; 512 images (the profile's fixed list), 256 for
    RT3 and AutoAttack."""
    atop = {t: _stem(run, purifier, t, True) for t in ("rt1", "rt2", "rt3")}
    name = f"{purifier.upper()} + AToP"
    comparisons = [
        *_atop_claims(run),
        *_transform_claims(run, atop, name),
        *_generalization_claims(run, atop["rt2"], name),
        *_protocol_and_attack_claims(run, atop["rt2"], name),
    ]
    return [c for c in comparisons if c.claim in run.profile.claims]


def _pgd(run: Run) -> AttackConfig:
    return attack(run.profile, "pgd", "whole-model", run.profile.evaluation.steps)


def _atop_claims(run: Run) -> list[Comparison]:
    """C1 and C2: each claim purifier's RT2 defense with and without AToP."""
    n, pgd = run.profile.data.n_eval, _pgd(run)
    clean = attack(run.profile, "clean", "whole-model")  # the tables' clean records
    out = []
    for kind in run.profile.claim_purifiers:
        atop, plain = _stem(run, kind, "rt2", True), _stem(run, kind, "rt2", False)
        name = kind.upper()
        out.append(  # the claim is about the AToP defense: its purification must hold
            Comparison(
                "C1",
                f"AToP raises robust accuracy ({name}, RT2)",
                Arm(atop, pgd, n=n),
                Arm(plain, pgd, n=n),
                purifiers=(atop,),
            )
        )
        out.append(
            Comparison(
                "C2",
                f"AToP keeps clean accuracy ({name}, RT2)",
                Arm(atop, clean, n=n),
                Arm(plain, clean, n=n),
                test="not_lower",
                margin=CLEAN_MARGIN,
                purifiers=(atop,),
            )
        )
    return out


def _transform_claims(run: Run, atop: dict[str, str], name: str) -> list[Comparison]:
    """C3: RT2 against RT1, and RT3 against RT2 (on fewer images: RT3 purifies N copies)."""
    n, pgd = run.profile.data.n_eval, _pgd(run)
    few = min(n, MIN_IMAGES_EXPENSIVE)
    return [
        Comparison(
            "C3",
            f"RT2's noise adds robustness over RT1's masks ({name})",
            Arm(atop["rt2"], pgd, n=n),
            Arm(atop["rt1"], pgd, n=n),
            purifiers=(atop["rt2"], atop["rt1"]),
        ),
        Comparison(
            "C3",
            f"RT3's N masks add robustness over RT2 ({name})",
            Arm(atop["rt3"], pgd, n=few),
            Arm(atop["rt2"], pgd, n=few),
            purifiers=(atop["rt3"],),
            expensive=True,
            note="RT3 purifies N copies: 256 images",
        ),
    ]


def _generalization_claims(run: Run, defense: str, name: str) -> list[Comparison]:
    """C4: the adversarially trained baseline wins on its own attack (L∞), AToP on unseen ones
    (none without a baseline)."""
    p, n = run.profile, run.profile.data.n_eval
    if not p.baselines:
        return []
    at = bare_defense(run).replace("plain", f"at-{p.baselines[0]}")
    out = []
    for label, attack_name, at_wins in GENERALIZATION_CLAIMS:
        cfg = attack(p, attack_name, "whole-model", p.evaluation.steps)
        arms = (Arm(at, cfg, n=n), Arm(defense, cfg, n=n))
        who = "adversarial training" if at_wins else "AToP"
        out.append(
            Comparison(
                "C4",
                f"{label}: {who} is the more robust ({p.baselines[0]} AT vs {name})",
                *(arms if at_wins else arms[::-1]),
                purifiers=(defense,),
            )
        )
    return out


def _protocol_and_attack_claims(run: Run, defense: str, name: str) -> list[Comparison]:
    """C5: classifier-only PGD against the whole-model attack; C6: the full-gradient attack
    against BPDA+EOT, the preliminary PGD+EOT and AutoAttack rand (256 images), each with the
    margin C2 allows."""
    p, n = run.profile, run.profile.data.n_eval
    few, pgd, steps = min(n, MIN_IMAGES_EXPENSIVE), _pgd(run), p.evaluation.steps
    classifier_only = attack(p, "pgd", "classifier-only", steps)
    out = [
        Comparison(
            "C5",
            f"the classifier-only protocol overstates robustness ({name})",
            Arm(defense, classifier_only, "classifier-only", n=n),
            Arm(defense, pgd, n=n),
            purifiers=(defense,),
        )
    ]
    bpda, prelim = attack(p, "bpda-eot", "whole-model", steps), preliminary_pgd_eot(p)
    same = "the same attack as BPDA+EOT at this profile (EOT 10 capped)" if prelim == bpda else ""
    others = (
        ("BPDA+EOT", bpda, n, ""),
        ("the preliminary PGD+EOT", prelim, n, same),
        ("AutoAttack rand", configure(p, "autoattack-rand", "whole-model", steps), few,
         "AutoAttack runs two APGDs with EOT: 256 images"),
    )  # fmt: skip
    for label, other, images, note in others:
        out.append(
            Comparison(
                "C6",
                f"full gradients are at least as strong as {label} ({name})",
                Arm(defense, pgd, n=images),
                Arm(defense, other, n=images),
                test="not_higher",
                margin=CLEAN_MARGIN,
                purifiers=(defense,),
                expensive=images < n,
                note=note,
            )
        )
    return out


def bare_defense(run: Run) -> str:
    """The bare classifier's defense, whose clean accuracy a purifier's is held against."""
    return _stem(run, "none", "none", False)


def randomness_arms(run: Run) -> list[tuple[Arm, Arm]]:
    """Each C1 defense under PGD-EOT with fresh and with frozen draws (the same images): what the
    randomness gives, and what the purifier gives on its own (none when the profile skips it)."""
    p = run.profile
    if not p.frozen_split:
        return []
    pgd = attack(p, "pgd", "whole-model", p.evaluation.steps)
    kinds = p.claim_purifiers
    names = [_stem(run, kind, "rt2", atop) for kind in kinds for atop in (False, True)]
    return [
        (Arm(s, pgd, n=p.data.n_eval), Arm(s, pgd, n=p.data.n_eval, randomness="frozen"))
        for s in names
    ]


def claim_arms(run: Run, purifier: str = "ae") -> list[Arm]:
    """Every record the claims section reads (each once), the bare classifier's clean accuracy
    and the purifiers' first."""
    comparisons = claim_comparisons(run, purifier)
    clean, n = attack(run.profile, "clean", "whole-model"), run.profile.data.n_eval
    arms = [Arm(bare_defense(run), clean, n=n)]
    arms += [Arm(d, clean, n=n) for c in comparisons for d in c.purifiers]
    arms += [arm for c in comparisons for arm in (c.a, c.b)]
    arms += [arm for pair in randomness_arms(run) for arm in pair]
    return list(dict.fromkeys(arms))


def evaluate_arms(run: Run, arms: list[Arm]) -> list[dict]:
    """The records of `arms` (resumed or computed), judged over the profile's draws (the claims
    need CLAIM_DRAWS: quick and paper have them; smoke's rows say too few)."""
    return [
        evaluate_defense(
            run.checkpoints / f"{arm.defense}.pt",
            run.profile,
            arm.attack,
            protocol=arm.protocol,
            device=run.device,
            n=arm.n,
            draws=run.profile.evaluation.draws,
            seed=run.seed,
            randomness=arm.randomness,
        )[0]
        for arm in arms
    ]


def claims_section(run: Run, purifier: str = "ae") -> tuple[pd.DataFrame, pd.DataFrame]:
    """The claims' rows (`claims.decide`) and the fresh-vs-frozen split, from the records the
    run wrote for this dataset."""
    records = load_records(settings().results_dir / run.profile.name / run.dataset)
    rows = decide(records, claim_comparisons(run, purifier), bare_defense(run))
    return rows, randomness_split(records, randomness_arms(run))


def claims_loss_traces(run: Run, purifier: str = "ae") -> dict[str, list[float]]:
    """The mean loss per iterate of each traced record the claims compare, by defense and
    attack."""
    records = load_records(settings().results_dir / run.profile.name / run.dataset)
    traces = {}
    for c in claim_comparisons(run, purifier):
        for arm in (c.a, c.b):
            record = find(records, arm)
            if record is not None and record.get("trace"):
                label = f"{arm.defense.removeprefix('defense-')} · {arm.describe()} (n={arm.n})"
                traces[label] = mean_loss_curve(record["trace"])
    return traces


def indicator_summary(records: list[dict]) -> pd.DataFrame:
    """Per record: each attack-failure indicator fired (✗), quiet (✓) or not applicable (–)."""
    rows = []
    for r in records:
        marks = {
            name: {True: "✗", False: "✓", None: "–"}[
                r.get("indicators", {}).get(name, {}).get("fired")
            ]
            for name in INDICATORS
        }
        rows.append(
            {
                "defense": r["defense"]["name"],
                "attack": r["attack"]["name"],
                "n": r["n"],
                **marks,
                "unreliable": r["unreliable"],
            }
        )
    return pd.DataFrame(rows)


def claims_runs(run: Run) -> list[Run]:
    """The run on each dataset of its profile that has records, in the profile's order."""
    results = settings().results_dir / run.profile.name
    datasets = [d for d in get_profile(run.profile.name).datasets if (results / d).is_dir()]
    return [run.on(d) for d in datasets]


def all_claims(run: Run, purifier: str = "ae") -> tuple[pd.DataFrame, pd.DataFrame]:
    """`claims_section` of every dataset with records, stacked, a dataset column first (Holm's
    adjustment stays within a dataset's rows)."""
    rows, splits = [], []
    for r in claims_runs(run):
        section, split = claims_section(r, purifier)
        rows.append(section.assign(dataset=r.dataset))
        splits.append(split.assign(dataset=r.dataset))
    return _stacked(rows), _stacked(splits)


def _stacked(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return frame[["dataset", *frame.columns.drop("dataset")]] if len(frame) else pd.DataFrame()


def write_claims(run: Run, purifier: str = "ae") -> list:
    """Decide the claims on every dataset with records, write tables/<profile>/claims.md|csv
    and each dataset's loss-trace figure, and return the report's claims blocks
    (`report.claims_blocks`)."""
    rows, split = all_claims(run, purifier)
    shown = display(rows)
    tables = settings().tables_dir(run.profile.name)
    tables.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(tables / "claims.md", (markdown_table(shown) + "\n").encode())
    write_bytes_atomic(tables / "claims.csv", rows.to_csv(index=False).encode())
    figures = []
    for r in claims_runs(run):
        if traces := claims_loss_traces(r, purifier):
            figure, _ = save_figure(plots.loss_traces(traces), r.figures / "claims_loss_traces")
            figures.append((r.dataset, figure))
    return claims_blocks(shown, split, figures, report_path(run.profile).parent)


def update_readme_claims(run: Run, purifier: str = "ae") -> bool:
    """Put the claims table of this run's records into the README's claims block (when the home
    is a checkout with a README that has one)."""
    readme = settings().home / "README.md"
    if not readme.exists():
        return False
    rows, _ = all_claims(run, purifier)
    datasets = ", ".join(r.dataset for r in claims_runs(run))
    source = (
        f"Generated by `bash run_all.sh` (profile `{run.profile.name}`; {datasets}) from the "
        f"records under `results/{run.profile.name}/`; the same table opens `REPORT.md`."
    )
    return update_readme(readme, display(rows), source)
