"""Typed value slots and the mixture head: kinds agree with the grammar, densities are densities,
sampling follows the tempered mixture, point values and errors are in the values' units."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from matra_hpc.model import ModelConfig
from matra_hpc.model.slots import (
    ANGLE,
    COORD,
    LENGTH,
    NONE,
    grammar_slot_kind,
    sequence_slot_kinds,
    value_abs_errors,
)
from matra_hpc.model.transformer import ValueMixture
from matra_hpc.tokens import encode
from matra_hpc.tokens.grammar import Grammar


@pytest.fixture(scope="module")
def demo_sequences():
    from matra_hpc.data.demo import iter_flla

    out = []
    for rec in iter_flla(limit=40):
        try:
            out.append(encode(rec.structure))
        except Exception:  # disordered or otherwise not encodable: not what this test is about
            continue
    assert len(out) >= 20
    return out


def test_sequence_kinds_agree_with_the_grammar_at_every_position(demo_sequences):
    grammar = Grammar()
    seen = set()
    batch = np.zeros((len(demo_sequences), max(len(s.tokens) for s in demo_sequences)), dtype=np.int64)
    for i, seq in enumerate(demo_sequences):
        batch[i, : len(seq.tokens)] = seq.tokens
        kinds = sequence_slot_kinds(np.asarray(seq.tokens))
        state = grammar.new_states(1)[0]
        for t, (token, value) in enumerate(zip(seq.tokens, seq.values, strict=True)):
            assert grammar_slot_kind(grammar, state) == kinds[t], (i, t)
            assert (kinds[t] == NONE) == (token != grammar.vocab.num)
            seen.add(int(kinds[t]))
            grammar.advance(state, token, value)
        # a padded batch gives each row's kinds
        np.testing.assert_array_equal(sequence_slot_kinds(batch)[i, : len(seq.tokens)], kinds)
    assert seen == {NONE, COORD, LENGTH, ANGLE}


def _mixture(k: int = 3) -> ValueMixture:
    return ValueMixture(ModelConfig(vocab_size=10, n_layer=1, n_head=1, d_model=8, n_gauss=4, n_mix=k))


def _params(mix: ValueMixture, kind: int, logits, locs, log_scales) -> torch.Tensor:
    p = torch.zeros(3, 3, mix.k)
    p[kind - 1, 0], p[kind - 1, 1], p[kind - 1, 2] = (torch.tensor(x, dtype=torch.float32)
                                                      for x in (logits, locs, log_scales))
    return p.reshape(-1)


def test_mixture_densities_integrate_to_one_and_coordinates_are_periodic():
    mix = _mixture()
    # coordinates: three von Mises components over x in [0, 1)
    p = _params(mix, COORD, [0.0, 1.0, -1.0], [0.1, 0.55, 0.9], [math.log(30.0), math.log(5.0), 0.0])
    x = torch.linspace(0, 1, 20001)[:-1]
    nll = mix.nll(p.expand(len(x), -1), x, torch.full(x.shape, COORD))
    assert float(torch.exp(-nll).mean()) == pytest.approx(1.0, abs=1e-3)
    # periodic: a component at 0 is as likely at 0.999 as at 0.001, and loc + 1 is the same loc
    p0 = _params(mix, COORD, [0.0, -30.0, -30.0], [0.0, 0.5, 0.5], [math.log(50.0), 0.0, 0.0])
    near = mix.nll(p0[None].expand(3, -1), torch.tensor([0.999, 0.001, 0.5]), torch.full((3,), COORD))
    torch.testing.assert_close(near[0], near[1], atol=1e-4, rtol=0)
    assert float(near[2]) > float(near[0]) + 10
    shifted = _params(mix, COORD, [0.0, -30.0, -30.0], [1.0, 1.5, -0.5], [math.log(50.0), 0.0, 0.0])
    torch.testing.assert_close(mix.nll(shifted[None], torch.tensor([0.02]), torch.tensor([COORD])),
                               mix.nll(p0[None], torch.tensor([0.02]), torch.tensor([COORD])), atol=1e-4, rtol=0)
    # lengths: Gaussians over z = (ln a - loc) / scale, a density over z
    p = _params(mix, LENGTH, [0.0, 0.5, 0.0], [-1.0, 0.0, 1.2], [math.log(0.3), math.log(0.2), 0.0])
    z = torch.linspace(-8, 8, 40001)
    a = torch.exp(z * mix.length_scale + mix.length_loc)
    dens = torch.exp(-mix.nll(p.expand(len(z), -1), a, torch.full(z.shape, LENGTH)))
    assert float(torch.trapezoid(dens, z)) == pytest.approx(1.0, abs=1e-3)
    # NONE slots cost nothing
    assert float(mix.nll(p[None], torch.tensor([5.0]), torch.tensor([NONE]))[0]) == 0.0


def test_sampling_follows_the_tempered_mixture():
    mix = _mixture(2)
    rng = np.random.default_rng(0)
    # angles: 75% near 90 deg (sd 2), 25% near 110 deg (sd 4)
    p = _params(mix, ANGLE, [math.log(3.0), 0.0], [0.0, 1.0], [math.log(0.1), math.log(0.2)]).numpy()
    draws = np.array([mix.sample(p, ANGLE, 1.0, rng) for _ in range(4000)])
    high = draws > 100
    assert high.mean() == pytest.approx(0.25, abs=0.03)
    assert draws[~high].mean() == pytest.approx(90.0, abs=0.2)
    assert draws[~high].std() == pytest.approx(2.0, rel=0.08)
    assert draws[high].std() == pytest.approx(4.0, rel=0.1)
    # a low temperature sharpens the weights (0.75^4 : 0.25^4) and the spread (sd * sqrt(T))
    cold = np.array([mix.sample(p, ANGLE, 0.25, rng) for _ in range(2000)])
    assert (cold > 100).mean() < 0.03
    assert cold[cold < 100].std() == pytest.approx(1.0, rel=0.1)
    # coordinates wrap: a component at 0.98 gives values on both sides of 0
    p = _params(mix, COORD, [0.0, -30.0], [0.98, 0.5], [math.log(50.0), 0.0]).numpy()
    coords = np.array([mix.sample(p, COORD, 1.0, rng) for _ in range(2000)])
    assert ((coords >= 0) & (coords < 1)).all()
    assert (coords < 0.05).mean() > 0.1 and (coords > 0.93).mean() > 0.5
    # lengths are positive and centred on the component's length
    p = _params(mix, LENGTH, [0.0, -30.0], [0.5, 0.0], [math.log(0.01), 0.0]).numpy()
    lengths = np.array([mix.sample(p, LENGTH, 1.0, rng) for _ in range(500)])
    assert np.median(lengths) == pytest.approx(math.exp(0.5 * mix.length_scale + mix.length_loc), rel=0.01)


def test_point_value_is_the_highest_peak_in_the_values_units():
    mix = _mixture(2)
    p = torch.stack([
        _params(mix, COORD, [0.0, 2.0], [0.3, 1.25], [0.0, 0.0]),
        _params(mix, LENGTH, [1.0, 0.0], [0.4, -1.0], [0.0, 0.0]),
        _params(mix, ANGLE, [0.0, 1.0], [0.0, 0.5], [0.0, 0.0]),
        # a lighter but much narrower component has the higher peak
        _params(mix, ANGLE, [0.0, 1.0], [-1.0, 0.5], [math.log(0.01), 0.0]),
    ])
    point = mix.point(p, torch.tensor([COORD, LENGTH, ANGLE, ANGLE]))
    expected = [0.25, math.exp(0.4 * mix.length_scale + mix.length_loc), mix.angle_loc + 0.5 * mix.angle_scale,
                mix.angle_loc - mix.angle_scale]
    assert point.tolist() == pytest.approx(expected, rel=1e-5)
    errors = value_abs_errors(np.array([0.98, 5.0, 95.0]), np.array([0.02, 4.0, 90.0]),
                              np.array([COORD, LENGTH, ANGLE]))
    assert errors[COORD].tolist() == pytest.approx([0.04])  # periodic distance
    assert errors[LENGTH].tolist() == [1.0] and errors[ANGLE].tolist() == [5.0]


def test_binned_coordinate_components_stay_in_their_stretch_and_sample_where_they_sit():
    mix = ValueMixture(ModelConfig(vocab_size=10, n_layer=1, n_head=1, d_model=8, n_gauss=4, n_mix=4,
                                   coord_bins=True))
    # the initial bias puts component k at the centre of its stretch, (k + 1/2) / K: generic
    # values, not the special positions 0, 1/4, 1/2 where an orbit collapses
    block = mix.select(mix.initial_bias()[None], torch.tensor([COORD]))[0]
    assert block[1].tolist() == pytest.approx([0.125, 0.375, 0.625, 0.875])
    # whatever the raw location, component k stays within BIN_REACH / K of its centre
    raw = torch.tensor([-50.0, -0.3, 0.8, 50.0])
    p = _params(mix, COORD, [0.0, 0.0, 0.0, 0.0], raw.tolist(), [math.log(200.0)] * 4)
    loc = mix.select(p[None], torch.tensor([COORD]))[0, 1]
    reach = mix.BIN_REACH / 4
    assert (loc - (torch.arange(4) + 0.5) / 4).abs().max() <= reach + 1e-6
    assert float(loc[0]) == pytest.approx(0.125 - reach) and float(loc[3]) == pytest.approx(0.875 + reach)
    # lengths and angles keep free locations
    p_len = _params(mix, LENGTH, [0.0] * 4, [3.0, 0.0, 0.0, 0.0], [0.0] * 4)
    assert float(mix.select(p_len[None], torch.tensor([LENGTH]))[0, 1, 0]) == 3.0
    # the density is still a density, and sampling and the point value use the binned locations
    x = torch.linspace(0, 1, 20001)[:-1]
    dens = torch.exp(-mix.nll(p.expand(len(x), -1), x, torch.full(x.shape, COORD)))
    assert float(dens.mean()) == pytest.approx(1.0, abs=1e-3)
    one = _params(mix, COORD, [-30.0, 0.0, -30.0, -30.0], [0.0, 0.8, 0.0, 0.0], [0.0, math.log(5000.0), 0.0, 0.0])
    expected = (1.5 + mix.BIN_REACH * math.tanh(0.8)) / 4
    rng = np.random.default_rng(1)
    draws = np.array([mix.sample(one.numpy(), COORD, 1.0, rng) for _ in range(400)])
    assert np.median(draws) == pytest.approx(expected, abs=2e-3)
    assert float(mix.point(one[None], torch.tensor([COORD]))[0]) == pytest.approx(expected, abs=1e-6)


def _two_free_position(group: int, n_free: int) -> str:
    from matra_hpc.tokens import wyckoff_table

    return next(p.letter for p in wyckoff_table()[group] if p.n_free == n_free)


def test_repulsion_context_lists_the_values_that_land_on_earlier_atoms():
    from matra_hpc.model.slots import repulsion_context, sequence_repulsion
    from matra_hpc.tokens import load_vocab, wyckoff_table

    v, nan = load_vocab(), math.nan
    positions = {p.letter: p for p in wyckoff_table()[221]}  # Pm-3m: 1a (0,0,0), 6e (x,0,0)
    assert positions["a"].n_free == 0 and positions["e"].n_free == 1
    head = [v.arity(1), v.element(26), v.count(13), v.spacegroup(221)]
    e_site = [v.wyckoff(221, "e"), v.element(26)]
    # the site's own orbit collapses at x = 0 and 1/2 ((x,0,0) meets (-x,0,0)): always there
    assert repulsion_context(head + e_site, [nan] * 6) == ([0.0, 0.5], [1.0, 1.0])
    # an earlier 6e site at x = 0.2 has atoms at (0.2, 0, 0) and (-0.2, 0, 0) on the line (x, 0, 0)
    tokens = head + e_site + [v.num] + e_site
    values = [nan] * 6 + [0.2, nan, nan]
    reps, weights = repulsion_context(tokens, values)
    assert reps == pytest.approx([0.0, 0.2, 0.5, 0.8]) and weights == pytest.approx([1.0] * 4)
    # an atom on 1a sits at x = 0 of that line: another token repels too (one entry per value)
    tokens = head + [v.wyckoff(221, "a"), v.element(26)] + e_site
    reps, weights = repulsion_context(tokens, [nan] * len(tokens))
    assert reps == pytest.approx([0.0, 0.5]) and weights == pytest.approx([1.0, 1.0])
    # the batch form gives the same lists at the value's position, nothing elsewhere
    full = tokens + [v.num, v.end]
    r, w = sequence_repulsion(np.array([full]), np.array([[nan] * len(tokens) + [0.31, nan]]))
    assert r[0, len(tokens), 0] == pytest.approx(0.0) and w[0, len(tokens), 0] == pytest.approx(1.0)
    assert (np.delete(w[0], len(tokens), axis=0) == 0).all()
    assert repulsion_context(head, [nan] * 4) == ([], [])  # not a free value next


def test_repelled_coordinates_are_a_density_and_keep_away():
    cfg = ModelConfig(vocab_size=10, n_layer=1, n_head=1, d_model=8, n_gauss=4, n_mix=2, value_head="mixture",
                      coord_repulsion=True)
    mix = ValueMixture(cfg)
    p = torch.zeros(mix.n_params)
    p[:6] = torch.tensor([0.0, -30.0, 0.25, 0.5, math.log(20.0), 0.0])  # one von Mises at 0.25
    p[-2], p[-1] = 8.0, math.log(500.0)  # strong, narrow repulsion
    reps, weights = torch.tensor([[0.25]]), torch.tensor([[1.0]])
    x = (torch.arange(4000) + 0.5) / 4000
    nll = mix.repelled_nll(p.expand(len(x), -1), x, reps.expand(len(x), -1), weights.expand(len(x), -1))
    assert float(torch.exp(-nll).mean()) == pytest.approx(1.0, abs=2e-3)
    assert float(torch.exp(-nll[1000])) < 0.01 * float(torch.exp(-nll).max())  # x = 0.25: pushed away
    rng = np.random.default_rng(1)
    draws = np.array([mix.sample(p.numpy(), COORD, 1.0, rng, repel=([0.25], [1.0])) for _ in range(2000)])
    assert np.abs(draws - 0.25).max() < 0.2
    # the draws follow the repelled density: its mass near the repelled value and in the flanks
    density = torch.exp(-nll).numpy()
    for lo, hi in ((0.0, 0.01), (0.01, 0.03), (0.03, 0.2)):
        near = (np.abs(x.numpy() - 0.25) >= lo) & (np.abs(x.numpy() - 0.25) < hi)
        expected = float(density[near].sum() / len(x))
        got = float(((np.abs(draws - 0.25) >= lo) & (np.abs(draws - 0.25) < hi)).mean())
        assert got == pytest.approx(expected, abs=4 * math.sqrt(expected * (1 - expected) / len(draws)) + 2e-3)
    assert float(((np.abs(draws - 0.25) < 0.01)).mean()) < 0.05  # pushed away (plain: ~22%)
    # no repulsion: the plain von Mises around 0.25
    plain = np.array([mix.sample(p.numpy(), COORD, 1.0, rng) for _ in range(500)])
    assert np.abs(plain - 0.25).mean() < np.abs(draws - 0.25).mean()


def test_repelled_draws_by_rejection_and_on_the_grid_agree():
    """The repelled coordinate at T != 1 is the tempered mixture times the repulsion^(1/T):
    rejection sampling (the usual path) and the grid (its fallback) draw the same density."""
    cfg = ModelConfig(vocab_size=10, n_layer=1, n_head=1, d_model=8, n_gauss=4, n_mix=2, value_head="mixture",
                      coord_repulsion=True)
    mix = ValueMixture(cfg)
    grid_only = ValueMixture(cfg)
    grid_only.REPEL_TRIALS = 0
    p = torch.zeros(mix.n_params)
    # two von Mises (0.3: kappa 30, weight 2/3; 0.7: kappa 10), repulsion at 0.3 and 0.75
    p[:6] = torch.tensor([math.log(2.0), 0.0, 0.3, 0.7, math.log(30.0), math.log(10.0)])
    p[-2], p[-1] = 3.0, math.log(200.0)
    repel = ([0.3, 0.75], [1.0, 0.5])
    for temperature in (0.7, 1.4):
        rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(4)
        a = np.array([mix.sample(p.numpy(), COORD, temperature, rng_a, repel=repel) for _ in range(3000)])
        b = np.array([grid_only.sample(p.numpy(), COORD, temperature, rng_b, repel=repel) for _ in range(3000)])
        edges = np.linspace(0.0, 1.0, 21)
        ha, hb = np.histogram(a, edges)[0] / len(a), np.histogram(b, edges)[0] / len(b)
        assert np.abs(ha - hb).max() < 0.03
        assert abs((np.abs(a - 0.3) < 0.01).mean() - (np.abs(b - 0.3) < 0.01).mean()) < 0.02


def test_repulsion_of_many_sites_at_once_equals_one_by_one(demo_sequences):
    """The sampler asks for the repulsion of all rows of a step at once, reading the sites from
    the grammar; training reads them from the tokens, one position at a time: same lists."""
    from matra_hpc.model.slots import repulsion_context, site_repulsion_many

    grammar = Grammar()
    contexts, expected = [], []
    for seq in demo_sequences:
        state = grammar.new_states(1)[0]
        for t, (token, value) in enumerate(zip(seq.tokens, seq.values, strict=True)):
            context = grammar.site_context(state)
            if context is not None:
                contexts.append(context)
                expected.append(repulsion_context(seq.tokens[:t], seq.values[:t]))
            grammar.advance(state, token, value)
    assert sum(bool(r) for r, _ in expected) >= 5  # some sites do have something to keep away from
    got = site_repulsion_many(contexts)
    assert [r for r, _ in got] == [r for r, _ in expected]
    for (_, w_got), (_, w_expected) in zip(got, expected, strict=True):
        assert w_got == pytest.approx(w_expected, rel=1e-12)


@pytest.mark.parametrize("coord_bins", [False, True])
def test_sampling_many_rows_at_once_gives_each_row_its_own_draws(coord_bins):
    """The sampler draws a step's values in one call: a row's value comes from its own generator
    and is the one it gets drawn alone, whatever the other rows (refused proposals included)."""
    import copy

    mix = ValueMixture(ModelConfig(vocab_size=10, n_layer=1, n_head=1, d_model=8, n_gauss=4, n_mix=4,
                                   coord_repulsion=True, coord_bins=coord_bins))
    gen = np.random.default_rng(7)
    n = 40
    params = gen.normal(size=(n, mix.n_params))
    params[:, -2] = 6.0  # strong repulsion: many first proposals are refused
    kinds = gen.choice([COORD, LENGTH, ANGLE], size=n)
    atoms = gen.integers(1, 30, size=n)
    repels = [(gen.random(3).tolist(), [1.0, 0.5, 1.0]) if kind == COORD and k % 2 else None
              for k, kind in enumerate(kinds)]
    rngs = [np.random.default_rng(100 + k) for k in range(n)]
    copies = [copy.deepcopy(r) for r in rngs]
    alone = [mix.sample(params[k], int(kinds[k]), 0.8, copies[k], int(atoms[k]), repels[k]) for k in range(n)]
    together = mix.sample_many(params, kinds, 0.8, rngs, atoms, repels)
    assert together.tolist() == pytest.approx(alone, rel=1e-12, abs=1e-12)
    assert len(set(np.round(together, 9))) == n
    # each generator advanced exactly as far as alone: the next draws agree too
    assert [r.random() for r in rngs] == [r.random() for r in copies]
