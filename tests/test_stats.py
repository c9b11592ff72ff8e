"""Wilson intervals and exact McNemar p-values against values worked out by hand."""

import math

import pytest

from th_edit.stats import Z95, mcnemar_exact, mean_interval, wilson_interval

Z2 = Z95**2  # 3.841458820694124


def test_wilson_8_of_10():
    # p = 0.8, n = 10: denominator 1 + z²/10 = 1.384145882
    # centre = (0.8 + z²/20) / 1.384145882 = 0.992072941 / 1.384145882 = 0.7167387
    # half   = z · sqrt(0.016 + z²/400) / 1.384145882 = 1.959964 · sqrt(0.025603647) / 1.384145882
    #        = 1.959964 · 0.1600114 / 1.384145882 = 0.2265777
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.7167387 - 0.2265777, abs=2e-6)  # 0.490161
    assert high == pytest.approx(0.7167387 + 0.2265777, abs=2e-6)  # 0.943316


def test_wilson_0_of_5():
    # p = 0: centre = half = (z²/10) / (1 + z²/5), so low = 0 and high = 2·(z²/10)/(1 + z²/5)
    # = 0.768292 / 1.768292 = 0.434482
    low, high = wilson_interval(0, 5)
    assert low == 0.0
    assert high == pytest.approx((Z2 / 5) / (1 + Z2 / 5), abs=1e-12)
    assert high == pytest.approx(0.434482, abs=2e-6)


def test_wilson_5_of_5_mirrors_0_of_5():
    # p = 1 is the mirror image of p = 0: (1 − 0.434482, 1)
    low, high = wilson_interval(5, 5)
    assert low == pytest.approx(1 - 0.434482, abs=2e-6)
    assert high == 1.0


def test_wilson_bounds_are_exact_at_the_extremes():
    for n in range(1, 200):
        assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0
        for k in range(n + 1):
            low, high = wilson_interval(k, n)
            assert low <= k / n <= high


def test_wilson_empty_and_bad_counts():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(6, 5)


def test_mcnemar_values():
    # (0, 5): n = 5, P[X ≤ 0] = 1/32, p = 2/32
    assert mcnemar_exact(0, 5) == 0.0625
    assert mcnemar_exact(5, 0) == 0.0625
    # (1, 9): n = 10, P[X ≤ 1] = (C(10,0) + C(10,1)) / 1024 = 11/1024, p = 22/1024
    assert mcnemar_exact(1, 9) == 22 / 1024
    # (3, 3): P[X ≤ 3] = (1 + 6 + 15 + 20)/64 = 42/64, doubled is above 1, so p = 1
    assert mcnemar_exact(3, 3) == 1.0
    # no discordant pairs: no evidence either way
    assert mcnemar_exact(0, 0) == 1.0
    # (2, 8): P[X ≤ 2] = (1 + 10 + 45)/1024 = 56/1024, p = 112/1024
    assert mcnemar_exact(2, 8) == 112 / 1024


def test_mcnemar_is_exact_for_large_counts():
    # 2·P[X ≤ 0] for n = 2000 is 2^-1999, far below what a float sum of pmf terms would keep exactly.
    assert mcnemar_exact(0, 2000) == math.ldexp(1.0, -1999)
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 3)


def test_mean_interval():
    # values 1, 2, 3: mean 2, sample sd 1, half width z/√3
    mean, low, high = mean_interval([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert high - mean == pytest.approx(Z95 / math.sqrt(3))
    assert mean - low == pytest.approx(Z95 / math.sqrt(3))
    assert mean_interval([4.0]) == (4.0, 4.0, 4.0)


def test_one_spearman_with_a_defined_answer_for_undefined_input():
    import math

    from th_edit.stats import spearman
    from th_edit.subspace import spearman as crowding_spearman

    # Pairs with a non-finite value are left out, not turned into nan for the whole correlation.
    assert spearman([1, 2, float("nan"), 3, 4], [1, 2, 3, 4, 5]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, float("inf")], [3, 2, 1, 0]) == pytest.approx(-1.0)
    # Undefined (a constant side, too few finite pairs): None, in channels and crowding alike;
    # the subspace report writes it as nan, its own convention for "undefined".
    for x, y in (([1, 1, 1], [1, 2, 3]), ([1, 2], [2, 1]), ([1, float("nan"), 3], [1, 2, 3])):
        assert spearman(x, y) is None and math.isnan(crowding_spearman(x, y))
    assert spearman([1, 2], [2, 1], minimum=2) == pytest.approx(-1.0) == crowding_spearman([1, 2], [2, 1], minimum=2)
    with pytest.raises(ValueError):
        spearman([1, 2, 3], [1, 2])
