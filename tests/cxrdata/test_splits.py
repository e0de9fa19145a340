import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cxrdata.splits import assign_splits, parse_ratios, units


def test_parse_ratios_accepts_strings_and_checks_the_sum():
    assert parse_ratios("0.7,0.15,0.15") == (0.7, 0.15, 0.15)
    assert parse_ratios((0.8, 0.2)) == (0.8, 0.2)
    with pytest.raises(ValueError, match="add up to 1"):
        parse_ratios("0.7,0.2,0.2")
    with pytest.raises(ValueError, match="comma-separated"):
        parse_ratios("a,b")
    with pytest.raises(ValueError, match="non-negative"):
        parse_ratios((1.2, -0.2))
    for text in ("nan,nan,nan", "nan,0,1", "inf,0,0"):  # every comparison with NaN is False
        with pytest.raises(ValueError, match="non-negative|add up to 1"):
            parse_ratios(text)


def test_units_join_shared_groups_and_identical_files():
    groups = ["p1", "p1", "", "", "p2"]
    digests = ["a", "b", "b", "c", "c"]
    # 0-1 share p1, 1-2 share digest b, 3-4 share digest c
    assert sorted(map(sorted, units(groups, digests))) == [[0, 1, 2], [3, 4]]


def test_stratified_counts_close_to_ratios():
    labels = [0] * 300 + [1] * 100
    out = assign_splits(
        labels, [""] * 400, [str(i) for i in range(400)], ratios=(0.7, 0.15, 0.15), seed=0, num_classes=2
    )
    for cls, total in ((0, 300), (1, 100)):
        got = {
            s: sum(1 for l, o in zip(labels, out) if l == cls and o == s) for s in ("train", "val", "test")
        }
        assert abs(got["train"] - 0.7 * total) <= 1
        assert abs(got["val"] - 0.15 * total) <= 1
        assert abs(got["test"] - 0.15 * total) <= 1


def test_same_seed_same_split_other_seed_differs():
    labels = [i % 2 for i in range(200)]
    args = dict(ratios=(0.7, 0.15, 0.15), num_classes=2)
    a = assign_splits(labels, [""] * 200, [str(i) for i in range(200)], seed=1, **args)
    b = assign_splits(labels, [""] * 200, [str(i) for i in range(200)], seed=1, **args)
    c = assign_splits(labels, [""] * 200, [str(i) for i in range(200)], seed=2, **args)
    assert a == b and a != c


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 2), st.integers(0, 15), st.integers(0, 40)), min_size=1, max_size=120),
    st.integers(0, 10_000),
)
def test_no_patient_and_no_duplicate_file_straddles_two_splits(rows, seed):
    labels = [r[0] for r in rows]
    groups = [f"p{r[1]}" for r in rows]
    digests = [f"d{r[2]}" for r in rows]
    out = assign_splits(labels, groups, digests, ratios=(0.6, 0.2, 0.2), seed=seed, num_classes=3)
    for key in (groups, digests):
        where = {}
        for k, s in zip(key, out):
            assert where.setdefault(k, s) == s


def test_zero_ratio_split_gets_nothing():
    out = assign_splits(
        [0, 1] * 20, [""] * 40, [str(i) for i in range(40)], ratios=(0.8, 0.2, 0.0), seed=0, num_classes=2
    )
    assert "test" not in out and out.count("val") == 8
