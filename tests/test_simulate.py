"""raflora.simulate: rank collapse without training.

With no noise the rank-agnostic recursion is exact: direction j keeps a factor
q_j = sum_{i: r_i >= j} p_i of its singular value per round, so rho_{r_min} follows a closed form.
"""

import pytest

from raflora.simulate import simulate_collapse

RANKS = [2, 4, 4, 8]
SIZES = [1, 2, 3, 4]


pytestmark = pytest.mark.usefixtures("one_thread")


def closed_form_rho(t: int) -> float:
    # p = [.1, .2, .3, .4]; q_j = 1 (j <= 2), .9 (j = 3, 4), .4 (j = 5..8); flat start sigma_j = 1.
    energies = [1.0] * 2 + [0.9 ** (2 * t)] * 2 + [0.4 ** (2 * t)] * 4
    return sum(energies[:2]) / sum(energies)


def test_flexlora_collapses_like_the_closed_form():
    trace = simulate_collapse("flexlora", RANKS, SIZES, rounds=30, noise=0.0)
    assert len(trace.rho) == 31
    for t in (0, 1, 5, 30):
        assert trace.rho[t] == pytest.approx(closed_form_rho(t), abs=1e-9)


def test_raflora_does_not_collapse_without_noise():
    trace = simulate_collapse("raflora", RANKS, SIZES, rounds=30, noise=0.0)
    assert max(abs(x - 0.25) for x in trace.rho) < 1e-9


@pytest.mark.parametrize("seed", [0, 1])
def test_collapse_with_noisy_updates(seed):
    flex = simulate_collapse("flexlora", RANKS, SIZES, rounds=30, seed=seed)
    ra = simulate_collapse("raflora", RANKS, SIZES, rounds=30, seed=seed)
    assert flex.rho[0] == pytest.approx(2 / 8) and ra.rho[0] == pytest.approx(2 / 8)
    assert flex.rho[-1] >= 0.9
    # Noise adds a little energy everywhere; raflora's share stays near the start.
    assert abs(ra.rho[-1] - ra.rho[0]) < 0.15
    assert max(ra.rho) < 0.5


def test_zero_padding_collapses_too():
    assert simulate_collapse("zero_pad", RANKS, SIZES, rounds=30).rho[-1] >= 0.9
