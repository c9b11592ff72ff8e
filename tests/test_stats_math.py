"""The paired statistics (docs/method.md#paired-statistics) against their definitions, over many inputs:
`tests/test_stats.py` pins published values, these check the formulas hold everywhere."""

import math
import random
import statistics

import pytest

from th_edit.stats import Z95, mcnemar_exact, mean_interval, spearman, wilson_interval


@pytest.mark.parametrize("n", [1, 2, 7, 40, 200])
def test_wilson_bounds_solve_the_score_equation(n):
    """The Wilson interval is the set of p with |p̂ − p| ≤ z √(p(1 − p)/n): its ends solve the equality
    (except an end pinned at exactly 0 or 1, where p̂ is 0 or 1)."""
    for successes in range(n + 1):
        p_hat = successes / n
        low, high = wilson_interval(successes, n)
        assert 0.0 <= low <= p_hat <= high <= 1.0
        for end in (low, high):
            if end in (0.0, 1.0) and p_hat == end:
                continue
            assert (p_hat - end) ** 2 == pytest.approx(Z95**2 * end * (1 - end) / n, rel=1e-9, abs=1e-15)


def test_wilson_narrows_as_n_grows():
    widths = [(lambda lo_hi: lo_hi[1] - lo_hi[0])(wilson_interval(n // 2, n)) for n in (10, 40, 160, 640)]
    assert widths == sorted(widths, reverse=True)
    assert widths[-1] == pytest.approx(2 * Z95 * math.sqrt(0.25 / 640), rel=0.01)  # close to the normal interval


def _sign_test_p(b: int, c: int) -> float:
    """Two-sided sign test on b + c discordant pairs, in floating point from the binomial pmf."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) * 0.5**n for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail)


def test_mcnemar_is_the_two_sided_sign_test_on_discordant_pairs():
    rng = random.Random(0)
    for _ in range(300):
        b, c = rng.randint(0, 60), rng.randint(0, 60)
        p = mcnemar_exact(b, c)
        assert p == pytest.approx(_sign_test_p(b, c), rel=1e-12)
        assert p == mcnemar_exact(c, b)  # symmetric
        assert 0.0 < p <= 1.0
    assert mcnemar_exact(9, 9) == 1.0
    assert all(mcnemar_exact(0, c) > mcnemar_exact(0, c + 1) for c in range(1, 30))  # more one-sided: smaller p
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 3)


def test_mean_interval_is_mean_plus_minus_z_standard_errors():
    rng = random.Random(1)
    for n in (2, 3, 10, 57):
        values = [rng.gauss(0.3, 2.0) for _ in range(n)]
        mean, low, high = mean_interval(values)
        half = Z95 * statistics.stdev(values) / math.sqrt(n)
        assert mean == pytest.approx(statistics.fmean(values))
        assert (low, high) == pytest.approx((mean - half, mean + half))


def _ranks(values):
    ordered = sorted(values)
    return [ordered.index(v) + (ordered.count(v) + 1) / 2 for v in values]  # 1-based, ties averaged


def test_spearman_is_pearson_on_average_ranks():
    rng = random.Random(2)
    for n in (3, 5, 12):
        for _ in range(40):
            x = [rng.choice([0.0, 1.0, 2.0, rng.random()]) for _ in range(n)]
            y = [rng.random() for _ in range(n)]
            rx, ry = _ranks(x), _ranks(y)
            if len(set(x)) == 1:
                assert spearman(x, y) is None
                continue
            assert spearman(x, y) == pytest.approx(statistics.correlation(rx, ry), abs=1e-12)
            assert spearman(x, [math.exp(v) for v in y]) == pytest.approx(spearman(x, y))  # only the order matters
    assert spearman([1.0, 2.0], [2.0, 1.0]) is None  # fewer than three pairs
    assert spearman([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)
