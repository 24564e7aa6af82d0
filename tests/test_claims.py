"""Deciding the paper's claims from records built here with known outcomes."""

import math

import pytest

from atop_core import claims
from atop_core.attacks import AttackConfig
from atop_core.claims import Arm, Comparison
from atop_core.records import summarize_outcomes
from atop_core.report import README_END, README_START, update_readme

PGD = AttackConfig(name="pgd-eot", steps=10, eot=4)
CLEAN = AttackConfig(name="clean")
DRAWS = 10


def record(defense, attack, right, n=512, unreliable=False, randomness="fresh", draws=DRAWS):
    """A complete record whose image i is right in every draw if i is in `right`, else in none."""
    per_sample = {
        "index": list(range(n)),
        "correct_draws": [draws if i in right else 0 for i in range(n)],
        "first_draw": [int(i in right) for i in range(n)],
    }
    out = {
        "defense": {"name": defense},
        "attack": attack.describe(),
        "protocol": "whole-model",
        "indices": {"shard": None},
        "draws": draws,
        "per_sample": per_sample,
        "unreliable": unreliable,
        "complete": True,
        **summarize_outcomes(per_sample, draws),
    }
    if randomness != "fresh":
        out["randomness"] = randomness
    return out


def arms(n=512):
    return Arm("defense-x-atop", PGD, n=n), Arm("defense-x-plain", PGD, n=n)


def test_exact_mcnemar_matches_the_binomial_tail_by_hand():
    # 2 and 8 discordant pairs: P(X <= 2) for X ~ Bin(10, 1/2) is (1 + 10 + 45) / 1024
    assert claims.mcnemar_exact(2, 8) == pytest.approx(2 * 56 / 1024)
    assert claims.mcnemar_exact(8, 2) == claims.mcnemar_exact(2, 8)
    assert claims.mcnemar_exact(0, 6) == pytest.approx(2 / 64)
    assert claims.mcnemar_exact(0, 0) == 1.0 and claims.mcnemar_exact(5, 5) == 1.0


def test_holm_multiplies_by_the_remaining_count_and_stays_monotone():
    assert claims.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert claims.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_paired_interval_contains_the_difference_and_tightens_with_n():
    a = [True] * 60 + [False] * 40
    b = [True] * 50 + [False] * 50
    d, lo, hi = claims.paired_interval(a, b)
    assert d == pytest.approx(0.10) and lo < d < hi and lo > 0  # 10 discordant, all for a
    d4, lo4, hi4 = claims.paired_interval(a * 4, b * 4)
    assert d4 == pytest.approx(d) and hi4 - lo4 < hi - lo
    same = claims.paired_interval(a, a)
    assert same[0] == 0 and same[1] <= 0 <= same[2]


def test_a_clear_gain_is_supported_and_its_reverse_contradicted():
    a, b = arms()
    records = [record(a.defense, PGD, range(150)), record(b.defense, PGD, range(100))]
    gain = Comparison("C1", "AToP raises robust accuracy", a, b)
    loss = Comparison("C1", "the reverse", b, a)
    rows = claims.decide(records, [gain, loss])
    first, second = rows.to_dict("records")
    assert first["verdict"] == "supported" and first["only_a"] == 50 and first["only_b"] == 0
    assert first["acc_a"] == pytest.approx(150 / 512) and first["diff"] == pytest.approx(50 / 512)
    assert first["p_holm"] == pytest.approx(min(1.0, 2 * claims.mcnemar_exact(50, 0)))
    assert second["verdict"] == "contradicted"


def test_no_difference_is_inconclusive_and_says_so():
    a, b = arms()
    records = [record(a.defense, PGD, range(100)), record(b.defense, PGD, range(3, 103))]
    row = claims.decide(records, [Comparison("C1", "s", a, b)]).iloc[0]
    assert row["verdict"] == "inconclusive" and "no significant difference" in row["reason"]


@pytest.mark.parametrize(
    ("n", "unreliable", "reason"),
    [(256, False, "too few images (256 < 512)"), (512, True, "unreliable record")],
)
def test_too_few_images_or_an_unreliable_record_make_a_clear_gain_inconclusive(
    n, unreliable, reason
):
    a, b = arms(n)
    records = [
        record(a.defense, PGD, range(150), n=n, unreliable=unreliable),
        record(b.defense, PGD, range(50), n=n),
    ]
    row = claims.decide(records, [Comparison("C1", "s", a, b)]).iloc[0]
    assert row["verdict"] == "inconclusive" and reason in row["reason"]


@pytest.mark.parametrize(
    ("right_a", "right_b", "verdict"),
    [(range(150), range(50), "supported"), (range(50), range(150), "inconclusive")],
)
def test_an_unreliable_second_defense_blocks_only_a_verdict_that_rests_on_it(
    right_a, right_b, verdict
):
    a, b = arms()  # b may be overstated: a above it stands, b above a does not
    records = [record(a.defense, PGD, right_a), record(b.defense, PGD, right_b, unreliable=True)]
    row = claims.decide(records, [Comparison("C1", "s", a, b)]).iloc[0]
    assert row["verdict"] == verdict
    named = {"supported": "not what the verdict rests on: defense-x-plain",
             "inconclusive": "unreliable record (defense-x-plain"}[verdict]  # fmt: skip
    assert named in row["reason"]


@pytest.mark.parametrize(("unreliable", "verdict"), [("b", "inconclusive"), ("a", "supported")])
def test_not_higher_between_defenses_rests_on_the_second_arm(unreliable, verdict):
    a, b = arms()  # a within b's margin: an overstated b would make it so
    records = [
        record(a.defense, PGD, range(100), unreliable=unreliable == "a"),
        record(b.defense, PGD, range(100), unreliable=unreliable == "b"),
    ]
    row = claims.decide(records, [Comparison("C6", "s", a, b, test="not_higher", margin=0.03)])
    assert row.iloc[0]["verdict"] == verdict


def test_an_attack_comparison_is_decided_whatever_the_sanity_checks_say():
    weak, strong = PGD.__class__(name="pgd", steps=10), PGD
    a = Arm("defense-x-atop", weak, "classifier-only")
    b = Arm("defense-x-atop", strong)
    records = [
        {**record(a.defense, weak, range(200), unreliable=True), "protocol": "classifier-only"},
        record(b.defense, strong, range(100), unreliable=True),
    ]
    comparison = Comparison("C5", "classifier-only overstates", a, b)
    assert comparison.compares_attacks and not Comparison("C1", "s", *arms()).compares_attacks
    row = claims.decide(records, [comparison]).iloc[0]
    assert row["verdict"] == "supported"
    assert "pgd-10 classifier-only" in row["reason"] and "pgd-eot-10-eot4" in row["reason"]


def test_fewer_than_ten_draws_make_a_clear_gain_inconclusive():
    a, b = arms()
    records = [record(a.defense, PGD, range(150), draws=5), record(b.defense, PGD, range(50))]
    row = claims.decide(records, [Comparison("C1", "s", a, b)]).iloc[0]
    assert row["verdict"] == "inconclusive" and "too few draws per image (5 < 10)" in row["reason"]


def test_an_expensive_comparison_needs_only_256_images():
    a, b = arms(256)
    records = [record(a.defense, PGD, range(150), n=256), record(b.defense, PGD, range(50), n=256)]
    row = claims.decide(records, [Comparison("C3", "s", a, b, expensive=True)]).iloc[0]
    assert row["verdict"] == "supported"


def test_purification_is_checked_on_the_clean_records_whatever_their_image_count():
    a, b = arms(256)
    bare = "defense-none-none-plain"
    records = [
        record(a.defense, PGD, range(150), n=256),
        record(b.defense, PGD, range(50), n=256),
        record(bare, CLEAN, range(200), n=256),
        record(a.defense, CLEAN, range(50), n=256),  # 50 < half of 200
    ]
    comparison = Comparison("C3", "s", a, b, purifiers=(a.defense,), expensive=True)
    row = claims.decide(records, [comparison], bare_defense=bare).iloc[0]
    assert row["verdict"] == "inconclusive" and "does not purify" in row["reason"]


def test_a_purifier_that_does_not_purify_makes_its_claim_inconclusive():
    a, b = arms()
    bare = "defense-none-none-plain"
    records = [
        record(a.defense, PGD, range(150)),
        record(b.defense, PGD, range(50)),
        record(bare, CLEAN, range(400)),
        record(a.defense, CLEAN, range(100)),  # 100 < half of 400
    ]
    comparison = Comparison("C1", "s", a, b, purifiers=(a.defense,))
    row = claims.decide(records, [comparison], bare_defense=bare).iloc[0]
    assert row["verdict"] == "inconclusive" and "does not purify" in row["reason"]
    records[-1] = record(a.defense, CLEAN, range(300))
    assert claims.decide(records, [comparison], bare).iloc[0]["verdict"] == "supported"


def test_keeping_clean_accuracy_is_judged_against_the_margin():
    a, b = Arm("defense-x-atop", CLEAN), Arm("defense-x-plain", CLEAN)
    keeps = Comparison("C2", "s", a, b, test="not_lower", margin=0.03)
    close = [record(a.defense, CLEAN, range(400)), record(b.defense, CLEAN, range(405))]
    far = [record(a.defense, CLEAN, range(300)), record(b.defense, CLEAN, range(400))]
    assert claims.decide(close, [keeps]).iloc[0]["verdict"] == "supported"
    assert claims.decide(far, [keeps]).iloc[0]["verdict"] == "contradicted"


def test_at_least_as_strong_is_contradicted_only_by_a_clearly_weaker_attack():
    full, other = Arm("d", PGD), Arm("d", AttackConfig(name="bpda-eot", steps=10, eot=4))
    stronger = Comparison("C6", "s", full, other, test="not_higher", margin=0.03)
    as_strong = [record("d", PGD, range(100)), record("d", other.attack, range(102))]
    weaker = [record("d", PGD, range(200)), record("d", other.attack, range(100))]
    assert claims.decide(as_strong, [stronger]).iloc[0]["verdict"] == "supported"
    assert claims.decide(weaker, [stronger]).iloc[0]["verdict"] == "contradicted"


def test_a_missing_record_is_named_and_holm_counts_only_the_rows_that_ran():
    a, b = arms()
    records = [record(a.defense, PGD, range(150)), record(b.defense, PGD, range(100))]
    missing = Comparison("C5", "s", a, Arm("defense-y", PGD))
    rows = claims.decide(records, [Comparison("C1", "s", a, b), missing]).to_dict("records")
    assert rows[0]["p_holm"] == pytest.approx(rows[0]["p"])  # one p-value: no adjustment
    assert rows[1]["verdict"] == "inconclusive" and "record not run: defense-y" in rows[1]["reason"]


def test_records_are_matched_by_attack_randomness_and_image_count():
    a, _ = arms()
    fresh = record(a.defense, PGD, range(10))
    frozen = record(a.defense, PGD, range(20), randomness="frozen")
    other_n = record(a.defense, PGD, range(30), n=256)
    found = claims.find([other_n, frozen, fresh], a)
    assert found is fresh
    assert claims.find([fresh, frozen], Arm(a.defense, PGD, randomness="frozen")) is frozen
    assert claims.find([fresh], Arm(a.defense, CLEAN)) is None


def test_pairs_must_cover_the_same_images():
    with pytest.raises(ValueError, match="same images"):
        Comparison("C1", "s", Arm("a", PGD, n=512), Arm("b", PGD, n=256))
    with pytest.raises(ValueError, match="unknown test"):
        Comparison("C1", "s", Arm("a", PGD), Arm("b", PGD), test="bigger")


def test_display_and_the_randomness_split_show_percentages():
    a, b = arms()
    records = [
        record(a.defense, PGD, range(150)),
        record(b.defense, PGD, range(100)),
        record(a.defense, PGD, range(50), randomness="frozen"),
    ]
    shown = claims.display(claims.decide(records, [Comparison("C1", "s", a, b)])).iloc[0]
    assert shown["a % [95%]"].startswith("29.3 [") and shown["verdict"] == "supported"
    assert shown["n × draws"] == "512 × 10"
    split = claims.randomness_split(records, [(a, Arm(a.defense, PGD, randomness="frozen"))])
    row = split.iloc[0]
    assert (row["fresh draws %"], row["frozen draw %"]) == ("29.3", "9.8")
    assert math.isclose(float(row["randomness adds (points)"]), 19.5)


def test_the_readme_block_is_replaced_between_its_markers(tmp_path):
    a, b = arms()
    records = [record(a.defense, PGD, range(150)), record(b.defense, PGD, range(100))]
    table = claims.display(claims.decide(records, [Comparison("C1", "s", a, b)]))
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{README_START}\nold\n{README_END}\n\nafter\n")
    assert update_readme(readme, table, "from the records")
    text = readme.read_text()
    assert "old" not in text and "| C1 | s |" in text and text.endswith("\n\nafter\n")
    assert "from the records" in text
    readme.write_text("# no markers\n")
    assert not update_readme(readme, table, "x") and readme.read_text() == "# no markers\n"
