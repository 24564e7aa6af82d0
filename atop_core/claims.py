"""The paper's claims (C1-C6), each decided from two records on the same images with a paired test.

A comparison names two arms (a defense under an attack, protocol and randomness, on n fixed
test images), the reading that decides (majority vote over the record's draws; worst-of-N is
shown beside it) and the test: `greater` (a above b), `not_lower` (a at most `margin` below b)
or `not_higher` (a at most `margin` above b). Its row gives both accuracies with Wilson
intervals, the paired difference with Newcombe's interval, the exact McNemar p-value,
Holm-adjusted across the section, and a verdict: supported, contradicted or inconclusive, with
the reason (a missing record, too few images, an unreliable record the verdict rests on, a
purifier that does not purify at this scale, or a difference within the noise).

Which unreliable record a verdict rests on: a record that fails a gradient-masking check may
overstate its defense's robustness. Where the arms are two defenses under one attack, a verdict
that needs an arm's accuracy to be high rests on that arm (`greater` and `not_lower` are
supported by a high `a` and contradicted by a high `b`; `not_higher` the other way round).
Where the arms are one defense under two attacks (or protocols), the row compares the attacks:
each record measures its own attack's success, judged by the real defense with fresh draws, so
a weak attack is what the row measures, not a flaw in it, and no verdict rests on a sanity check.
Unreliable arms a verdict does not rest on are named beside it.
"""

import math
from dataclasses import dataclass

import pandas as pd

from atop_core.attacks import AttackConfig
from atop_core.records import sample_outcomes, wilson_interval

ALPHA = 0.05
MIN_IMAGES, MIN_IMAGES_EXPENSIVE = 512, 256  # the claims' image counts at quick and above
CLAIM_DRAWS = 10  # defense draws per image: the vote and worst-of-N readings (N >= 10)
CLEAN_MARGIN = 0.03  # C2: "within about 3 points"; also C6's allowance for a weaker attack
PURIFIES = 0.5  # a purifier purifies if the defense keeps half the classifier's clean accuracy
READING = "vote"  # the reading that decides: a deployed random defense answers by majority vote
TESTS = ("greater", "not_lower", "not_higher")


@dataclass(frozen=True)
class Arm:
    """One record: a defense file stem under one attack, protocol and randomness, on n images."""

    defense: str
    attack: AttackConfig
    protocol: str = "whole-model"
    n: int = MIN_IMAGES
    randomness: str = "fresh"

    def matches(self, record: dict) -> bool:
        return (
            record["defense"]["name"] == self.defense
            and record["attack"] == self.attack.describe()
            and record["protocol"] == self.protocol
            and record["n"] == self.n
            and record.get("randomness", "fresh") == self.randomness
            and record.get("indices", {}).get("shard") is None
        )

    def describe(self) -> str:
        budget = self.attack.tag() + ("" if self.protocol == "whole-model" else f" {self.protocol}")
        return budget + (" (frozen)" if self.randomness == "frozen" else "")


@dataclass(frozen=True)
class Comparison:
    """One row of the claims section: arm `a` against arm `b` by `test`."""

    claim: str  # C1 ... C6
    statement: str
    a: Arm
    b: Arm
    test: str = "greater"
    margin: float = 0.0
    purifiers: tuple[str, ...] = ()  # defenses whose purification must hold (clean accuracy)
    expensive: bool = False  # an expensive attack: MIN_IMAGES_EXPENSIVE images suffice
    note: str = ""

    @property
    def required(self) -> int:
        return MIN_IMAGES_EXPENSIVE if self.expensive else MIN_IMAGES

    @property
    def compares_attacks(self) -> bool:
        """Both arms are one defense: the row compares two attacks or protocols."""
        return self.a.defense == self.b.defense

    def __post_init__(self) -> None:
        if self.test not in TESTS:
            raise ValueError(f"unknown test {self.test!r}; known: {', '.join(TESTS)}")
        if self.a.n != self.b.n:
            raise ValueError(
                f"{self.claim}: paired arms need the same images, got n {self.a.n} and {self.b.n}"
            )


# --- statistics ---------------------------------------------------------------------------------


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b and c discordant pairs: twice the binomial(b + c,
    1/2) tail at min(b, c), at most 1."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment: the i-th smallest of m p-values times (m - i), made
    monotone, at most 1; returned in the input order."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def paired_interval(a: list[bool], b: list[bool]) -> tuple[float, float, float]:
    """The difference of two paired proportions, mean(a) - mean(b), with Newcombe's hybrid score
    95% interval (his method 10: Wilson intervals of each, joined through the phi correlation)."""
    n = len(a)
    both = sum(x and y for x, y in zip(a, b, strict=True))
    only_a = sum(x and not y for x, y in zip(a, b, strict=True))
    only_b = sum(y and not x for x, y in zip(a, b, strict=True))
    neither = n - both - only_a - only_b
    p1, p2 = (both + only_a) / n, (both + only_b) / n
    (l1, u1), (l2, u2) = wilson_interval(both + only_a, n), wilson_interval(both + only_b, n)
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    phi = (both * neither - only_a * only_b) / math.sqrt(margins) if margins else 0.0
    d = p1 - p2
    lower = d - math.sqrt(
        max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2)
    )
    upper = d + math.sqrt(
        max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2)
    )
    return d, max(-1.0, lower), min(1.0, upper)


# --- finding records ----------------------------------------------------------------------------


def find(records: list[dict], arm: Arm) -> dict | None:
    """The complete record of `arm`, if the run wrote it."""
    found = [r for r in records if arm.matches(r) and r.get("complete", True)]
    return found[0] if found else None


def _outcomes(record: dict, reading: str) -> dict[int, bool]:
    per_sample = sample_outcomes(record["per_sample"], record["draws"])[reading]
    return dict(zip(record["per_sample"]["index"], per_sample, strict=True))


def _clean_accuracy(records: list[dict], defense: str) -> float | None:
    """The defense's clean accuracy on the most images it has a record of (any seed: nothing is
    attacked)."""
    clean = [
        r
        for r in records
        if r["defense"]["name"] == defense
        and r["attack"]["name"] == "clean"
        and r["protocol"] == "whole-model"
        and r.get("complete", True)
    ]
    return max(clean, key=lambda r: r["n"])["accuracy"][READING] if clean else None


def _why_unreliable(arm: Arm, record: dict) -> str:
    failed = [k for k, v in record.get("sanity", {}).items() if v.get("passed") is False]
    failed += [k for k, v in record.get("indicators", {}).items() if v.get("fired")]
    return f"{arm.defense} · {arm.describe()}: {', '.join(failed) or 'marked unreliable'}"


# --- deciding -----------------------------------------------------------------------------------


def compare(records: list[dict], c: Comparison, bare_defense: str | None = None) -> dict:
    """The row of one comparison (before Holm's adjustment: `p` is the raw McNemar p-value)."""
    row = {
        "claim": c.claim,
        "statement": c.statement,
        "a": c.a.defense,
        "a_attack": c.a.describe(),
        "b": c.b.defense,
        "b_attack": c.b.describe(),
        "test": c.test,
        "margin": c.margin,
        "reading": READING,
        "note": c.note,
    }
    ra, rb = find(records, c.a), find(records, c.b)
    missing = [arm for arm, r in ((c.a, ra), (c.b, rb)) if r is None]
    if missing:
        names = "; ".join(f"{arm.defense} {arm.describe()} n={arm.n}" for arm in missing)
        return {
            **row,
            "n": None,
            "p": None,
            "verdict": "inconclusive",
            "reason": f"record not run: {names}",
        }
    oa, ob = _outcomes(ra, READING), _outcomes(rb, READING)
    if set(oa) != set(ob):
        raise ValueError(
            f"{c.claim}: the records of {c.a.defense} and {c.b.defense} cover other "
            "images; pair records of the same fixed list"
        )
    order = sorted(oa)
    a, b = [oa[i] for i in order], [ob[i] for i in order]
    worst_a, worst_b = (_outcomes(r, "worst") for r in (ra, rb))
    d, lower, upper = paired_interval(a, b)
    only_a = sum(x and not y for x, y in zip(a, b, strict=True))
    only_b = sum(y and not x for x, y in zip(a, b, strict=True))
    row.update(
        n=len(a),
        draws=min(ra["draws"], rb["draws"]),
        acc_a=sum(a) / len(a),
        ci_a=list(wilson_interval(sum(a), len(a))),
        acc_b=sum(b) / len(b),
        ci_b=list(wilson_interval(sum(b), len(b))),
        worst_a=sum(worst_a.values()) / len(a),
        worst_b=sum(worst_b.values()) / len(b),
        diff=d,
        diff_ci=[lower, upper],
        only_a=only_a,
        only_b=only_b,
        p=mcnemar_exact(only_a, only_b),
        unreliable=[side for side, r in (("a", ra), ("b", rb)) if r.get("unreliable")],
        why_unreliable={
            side: _why_unreliable(arm, r)
            for side, arm, r in (("a", c.a, ra), ("b", c.b, rb))
            if r.get("unreliable")
        },
        compares_attacks=c.compares_attacks,
        not_purifying=_not_purifying(records, c, bare_defense),
    )
    return row


def _not_purifying(records: list[dict], c: Comparison, bare: str | None) -> dict[str, str]:
    """Each of the comparison's purifier defenses that keeps less than PURIFIES of the bare
    classifier's clean accuracy, with the two accuracies."""
    if bare is None:
        return {}
    reference = _clean_accuracy(records, bare)
    out = {}
    for name in c.purifiers:
        clean = _clean_accuracy(records, name)
        if reference is not None and clean is not None and clean < PURIFIES * reference:
            out[name] = f"clean {100 * clean:.1f}% vs classifier {100 * reference:.1f}%"
    return out


def verdict(row: dict, required: int) -> tuple[str, str]:
    """(verdict, reason) of a row whose `p_holm` is set."""
    if row.get("n") is None:
        return "inconclusive", row["reason"]
    if row["n"] < required:
        return "inconclusive", f"too few images ({row['n']} < {required})"
    if row["draws"] < CLAIM_DRAWS:
        return "inconclusive", f"too few draws per image ({row['draws']} < {CLAIM_DRAWS})"
    decided, reason = _tested(row)
    why = row["why_unreliable"]
    rests_on = _rests_on(row["test"], decided, row["compares_attacks"])
    if rests_on in why:
        return "inconclusive", f"unreliable record ({why[rests_on]})"
    if decided == "inconclusive" and why:
        return "inconclusive", f"unreliable record ({'; '.join(why.values())})"
    if row["not_purifying"]:
        why_not = "; ".join(f"{k}: {v}" for k, v in row["not_purifying"].items())
        return "inconclusive", f"the purifier does not purify at this scale ({why_not})"
    if why:
        aside = f"unreliable, not what the verdict rests on: {'; '.join(why.values())}"
        reason = f"{reason}; {aside}" if reason else aside
    return decided, reason


def _tested(row: dict) -> tuple[str, str]:
    """(verdict, reason) of the row's test alone."""
    significant = row["p_holm"] < ALPHA
    d, (lower, upper), m = row["diff"], row["diff_ci"], row["margin"]
    if row["test"] == "greater":
        if significant:
            return ("supported", "") if d > 0 else ("contradicted", "significantly lower")
        return "inconclusive", f"no significant difference (Holm p = {row['p_holm']:.2g})"
    if row["test"] == "not_lower":
        if lower >= -m:
            return "supported", f"the interval lies above -{100 * m:g} points"
        if significant and upper < -m:
            return "contradicted", f"lower by more than {100 * m:g} points"
        return "inconclusive", f"the interval reaches below -{100 * m:g} points"
    if upper <= m:
        return "supported", f"the interval lies below +{100 * m:g} points"
    if significant and lower > m:
        return "contradicted", f"higher by more than {100 * m:g} points"
    return "inconclusive", f"the interval reaches above {100 * m:g} points"


def _rests_on(test: str, decided: str, compares_attacks: bool) -> str | None:
    """The arm ("a" or "b") whose overstated accuracy could have made the verdict: the arm the
    verdict needs high, among two defenses; none for an attack comparison or no verdict."""
    if compares_attacks or decided == "inconclusive":
        return None
    needs_a_high = (decided == "supported") == (test in ("greater", "not_lower"))
    return "a" if needs_a_high else "b"


def decide(
    records: list[dict], comparisons: list[Comparison], bare_defense: str | None = None
) -> pd.DataFrame:
    """Every comparison's row, p-values Holm-adjusted across those that ran, with verdicts;
    `bare_defense` names the bare classifier's defense, whose clean accuracy a purifier's is
    held against."""
    rows = [compare(records, c, bare_defense) for c in comparisons]
    ran = [i for i, r in enumerate(rows) if r.get("p") is not None]
    for i, adjusted in zip(ran, holm([rows[i]["p"] for i in ran]), strict=True):
        rows[i]["p_holm"] = adjusted
    for c, row in zip(comparisons, rows, strict=True):
        row["verdict"], row["reason"] = verdict(row, c.required)
    return pd.DataFrame(rows)


# --- showing -------------------------------------------------------------------------------------


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _interval(pair: list[float]) -> str:
    return f"[{100 * pair[0]:.1f}, {100 * pair[1]:.1f}]"


def display(rows: pd.DataFrame) -> pd.DataFrame:
    """The claims table as the report and the README show it: accuracies in %, vote reading
    (worst-of-N beside it), the paired difference, Holm-adjusted McNemar p, the verdict."""
    out = []
    for r in rows.to_dict("records"):
        ran = r.get("n") is not None and not pd.isna(r.get("n"))
        reason = "; ".join(t for t in (r["reason"], r.get("note")) if t)
        out.append(
            {
                **({"dataset": r["dataset"]} if "dataset" in r else {}),
                "claim": r["claim"],
                "statement": r["statement"],
                "a vs b": f"{r['a']} · {r['a_attack']} vs {r['b']} · {r['b_attack']}",
                "n × draws": f"{int(r['n'])} × {int(r['draws'])}" if ran else "",
                "a % [95%]": f"{_pct(r['acc_a'])} {_interval(r['ci_a'])}" if ran else "",
                "b % [95%]": f"{_pct(r['acc_b'])} {_interval(r['ci_b'])}" if ran else "",
                "a − b [95%]": f"{_pct(r['diff'])} {_interval(r['diff_ci'])}" if ran else "",
                "worst-of-N a / b": f"{_pct(r['worst_a'])} / {_pct(r['worst_b'])}" if ran else "",
                "McNemar p (Holm)": f"{r['p']:.2g} ({r['p_holm']:.2g})" if ran else "",
                "verdict": r["verdict"] + (f": {reason}" if reason else ""),
            }
        )
    return pd.DataFrame(out)


def randomness_split(records: list[dict], pairs: list[tuple[Arm, Arm]]) -> pd.DataFrame:
    """Per defense, robust accuracy (vote) with fresh draws and with each image's draw frozen
    (the attack and the judge share it): frozen is what the purifier holds on its own, the
    rest is what the randomness adds."""
    rows = []
    for fresh_arm, frozen_arm in pairs:
        fresh, frozen_ = find(records, fresh_arm), find(records, frozen_arm)
        if fresh is None or frozen_ is None:
            continue
        f, z = fresh["accuracy"][READING], frozen_["accuracy"][READING]
        rows.append(
            {
                "defense": fresh_arm.defense,
                "attack": fresh_arm.describe(),
                "n": fresh["n"],
                "fresh draws %": _pct(f),
                "frozen draw %": _pct(z),
                "randomness adds (points)": _pct(f - z),
                "worst-of-N fresh %": _pct(fresh["accuracy"]["worst"]),
            }
        )
    return pd.DataFrame(rows)
