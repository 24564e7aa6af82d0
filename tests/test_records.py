"""Record statistics, worst case across a suite, shard merging and record loading."""

import pytest

from atop_core.io import write_json
from atop_core.records import (
    RecordMismatchError,
    load_records,
    merge_shards,
    resume_or_start,
    summarize_outcomes,
    wilson_interval,
    worst_case,
)


def _record(first, counts, draws=3, name="pgd", index=None, **extra):
    per_sample = {
        "index": index or list(range(len(first))),
        "first_draw": first,
        "correct_draws": counts,
    }
    return {
        "attack": {"name": name},
        "draws": draws,
        "per_sample": per_sample,
        **summarize_outcomes(per_sample, draws),
        **extra,
    }


def test_wilson_interval_matches_known_values():
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0


def test_summary_separates_single_vote_and_worst():
    s = summarize_outcomes({"first_draw": [1, 1, 0], "correct_draws": [3, 2, 1]}, draws=3)
    assert s["n"] == 3
    assert s["accuracy"] == {"single": 2 / 3, "vote": 2 / 3, "worst": 1 / 3}
    assert s["interval"]["worst"] == list(wilson_interval(1, 3))


def test_worst_case_counts_a_sample_only_if_it_survives_every_attack():
    a = _record([1, 1, 0, 1], [3, 3, 0, 2], name="pgd")
    b = _record([1, 0, 1, 1], [3, 1, 3, 3], name="square", unreliable=True)
    result = worst_case([a, b])
    assert result["accuracy"] == {"single": 2 / 4, "vote": 2 / 4, "worst": 1 / 4}
    assert result["attacks"] == ["pgd", "square"] and result["unreliable"] is True


def test_worst_case_refuses_records_of_other_images():
    with pytest.raises(ValueError, match="covers other images"):
        worst_case([_record([1], [3], index=[5]), _record([1], [3], index=[6])])


def _shard(i, k, first, **run):
    base = {"schema": 1, "protocol": "whole-model", "draws": 3, "indices": {"shard": [i, k]}}
    return {**base, **_record(first, [3 * f for f in first]), **run, "complete": True, "wall_s": 1}


def test_merging_shards_concatenates_them_in_order(tmp_path):
    paths = []
    for i, first in enumerate([[1, 0], [0, 0], [1, 1]]):
        paths.append(tmp_path / f"d__pgd-10__whole-model__shard-{i}-of-3.json")
        write_json(paths[-1], {**_shard(i, 3, first), "env": {}})
    merged = merge_shards(list(reversed(paths)))
    assert merged["per_sample"]["first_draw"] == [1, 0, 0, 0, 1, 1]
    assert merged["accuracy"]["single"] == 0.5 and merged["n"] == 6 and merged["wall_s"] == 3


def test_merging_refuses_missing_incomplete_or_mismatched_shards(tmp_path):
    p0, p1 = (tmp_path / f"d__a__whole-model__shard-{i}-of-2.json" for i in range(2))
    write_json(p0, {**_shard(0, 2, [1]), "env": {}})
    with pytest.raises(ValueError, match="all of 0..1 needed"):
        merge_shards([p0])
    write_json(p1, {**_shard(1, 2, [1]), "env": {}, "complete": False})
    with pytest.raises(ValueError, match="not complete"):
        merge_shards([p0, p1])
    write_json(p1, {**_shard(1, 2, [1], protocol="classifier-only"), "env": {}})
    with pytest.raises(RecordMismatchError, match="protocol"):
        merge_shards([p0, p1])


def test_a_record_of_another_protocol_in_the_same_file_is_refused(tmp_path):
    path = tmp_path / "r.json"
    write_json(path, {"protocol": "whole-model", "per_sample": {}})
    with pytest.raises(RecordMismatchError, match="protocol 'whole-model' vs 'classifier-only'"):
        resume_or_start(path, {"protocol": "classifier-only"})


def test_load_records_skips_shards_and_incomplete_records(tmp_path):
    write_json(tmp_path / "q" / "a__clean__whole-model.json", {"complete": True})
    write_json(tmp_path / "q" / "b__clean__whole-model.json", {"complete": False})
    write_json(tmp_path / "q" / "a__pgd__whole-model__shard-0-of-2.json", {"complete": True})
    write_json(tmp_path / "q" / "train_status.json", {})
    assert len(load_records(tmp_path)) == 1 and len(load_records(tmp_path, False)) == 2
