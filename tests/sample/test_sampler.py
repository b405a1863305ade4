"""The grammar-masked sampler: legal tokens only, conditions honoured, cache == no cache."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from matra_hpc.errors import UsageError
from matra_hpc.model.transformer import symlog
from matra_hpc.sample.sampler import SamplerSettings, SamplingStats, sample_sequences
from matra_hpc.tokens import TokenSequence, load_vocab
from matra_hpc.tokens.conditions import Condition
from matra_hpc.tokens.grammar import Grammar


def _sample(model, grammar, n, t, seed=0, **settings):
    return sample_sequences(model, grammar, n, t, torch.Generator().manual_seed(seed), SamplerSettings(**settings))


@pytest.fixture(scope="module")
def hostile_model(tiny_model):
    """Random weights whose favourite tokens are illegal almost everywhere: the mask must win."""
    model = copy.deepcopy(tiny_model)
    vocab = load_vocab()
    with torch.no_grad():
        model.lm_head.bias[vocab.pad] = 40.0
        model.lm_head.bias[vocab.bos] = 40.0
        model.lm_head.bias[vocab.end] = 30.0
        model.cont_head.bias.fill_(-7.5)  # far outside every value range
    return model


@pytest.mark.parametrize("temperature", [0.7, 1.65])
def test_every_token_is_legal_and_every_sequence_completes(hostile_model, temperature: float) -> None:
    grammar = Grammar()
    seqs = _sample(hostile_model, grammar, 24, temperature, seed=3, batch_size=16)
    assert len(seqs) == 24
    for seq in seqs:
        assert seq.complete and seq.tokens[-1] == grammar.vocab.end
        rejection = grammar.first_rejection(TokenSequence(tokens=seq.tokens, values=seq.values))
        assert rejection is None, rejection


def test_values_stay_in_range_coordinates_wrap_lattice_clamps(tiny_paper_model) -> None:
    grammar = Grammar()
    model = copy.deepcopy(tiny_paper_model)
    with torch.no_grad():
        model.cont_head.weight.zero_()
        # the head works in symlog space (cont_loss_scale: log): this makes every value 1.25, so
        # coordinates wrap to 0.25 and angles clamp up to 30 deg
        model.cont_head.bias.fill_(float(symlog(torch.tensor(1.25))))
    wrapped_exactly = 0
    for seq in _sample(model, grammar, 8, 1.0, seed=5):
        state = grammar.new_states(1)[0]
        for token, value in zip(seq.tokens, seq.values, strict=True):
            if token == grammar.vocab.num:
                lo, hi = grammar.value_range(state)
                if (lo, hi) == (0.0, 1.0):
                    # 1.25 wraps to 0.25; only a value the grammar refuses is nudged or redrawn
                    wrapped_exactly += value == pytest.approx(0.25)
                    assert value == pytest.approx(0.25) or not grammar.value_allowed(state, 0.25)
                    assert 0.0 <= value < 1.0
                else:
                    assert lo <= value <= hi
            grammar.advance(state, token, value)
    assert wrapped_exactly > 0


def test_kv_cache_gives_the_same_samples_as_recomputing(tiny_model) -> None:
    grammar = Grammar()
    with_cache = _sample(tiny_model, grammar, 20, 1.0, seed=11, batch_size=8)
    stats = SamplingStats()
    without = sample_sequences(tiny_model, grammar, 20, 1.0, torch.Generator().manual_seed(11),
                               SamplerSettings(batch_size=8, use_cache=False), stats=stats)
    assert stats.forward_calls > 0
    for a, b in zip(with_cache, without, strict=True):
        assert a.tokens == b.tokens
        assert a.values == pytest.approx(b.values, abs=1e-4, nan_ok=True)


def test_same_seed_same_samples_other_seed_others(tiny_model) -> None:
    grammar = Grammar()
    a = _sample(tiny_model, grammar, 6, 1.0, seed=1)
    b = _sample(tiny_model, grammar, 6, 1.0, seed=1)
    c = _sample(tiny_model, grammar, 6, 1.0, seed=2)
    assert [s.tokens for s in a] == [s.tokens for s in b]
    assert _flat_values(a) == pytest.approx(_flat_values(b), nan_ok=True)
    assert [s.tokens for s in a] != [s.tokens for s in c]


def test_length_guard_cuts_and_says_so(tiny_model) -> None:
    seqs = _sample(tiny_model, Grammar(), 12, 1.3, seed=4, max_length=20)
    cut = [s for s in seqs if not s.complete]
    assert cut, "a 20-token guard must cut some random sequences"
    assert all(len(s.tokens) == 20 and s.tokens[-1] != load_vocab().end for s in cut)
    assert all(len(s.tokens) <= 20 for s in seqs)


def test_value_noise_is_seeded_and_stays_legal(tiny_paper_model) -> None:
    grammar = Grammar()
    a = _sample(tiny_paper_model, grammar, 6, 1.0, seed=8, value_noise=0.5)
    b = _sample(tiny_paper_model, grammar, 6, 1.0, seed=8, value_noise=0.5)
    plain = _sample(tiny_paper_model, grammar, 6, 1.0, seed=8)
    assert _flat_values(a) == pytest.approx(_flat_values(b), nan_ok=True)
    assert _flat_values(a) != pytest.approx(_flat_values(plain), nan_ok=True)
    assert all(grammar.accepts(TokenSequence(tokens=s.tokens, values=s.values)) for s in a)


def _flat_values(seqs) -> list[float]:
    return [v for s in seqs for v in s.values]


def _composition_elements(tokens: list[int]) -> set[int]:
    vocab = load_vocab()
    out = set()
    for t in tokens:
        if vocab.kind(t) == "spacegroup":
            break
        if vocab.kind(t) == "element":
            out.add(vocab.element_of(t))
    return out


def _group(tokens: list[int]) -> int:
    vocab = load_vocab()
    return next(vocab.spacegroup_of(t) for t in tokens if vocab.kind(t) == "spacegroup")


@pytest.mark.parametrize("temperature", [0.7, 1.65])
def test_conditions_hold_in_every_sample(hostile_model, temperature: float) -> None:
    vocab = load_vocab()
    condition = Condition.parse("elements=Al,Ca,Cu;spacegroups=191,194;stability=low")
    seqs = _sample(hostile_model, Grammar(condition=condition), 16, temperature, seed=6)
    for seq in seqs:
        assert seq.complete
        assert seq.tokens[0] == vocab.ehull_low
        assert _composition_elements(seq.tokens) == {13, 20, 29}
        assert _group(seq.tokens) in (191, 194)


def test_bad_arguments_fail_before_sampling(tiny_model) -> None:
    with pytest.raises(UsageError):
        _sample(tiny_model, Grammar(), 2, 0.0)
    with pytest.raises(UsageError):
        _sample(tiny_model, Grammar(), 2, math.inf)
    with pytest.raises(UsageError):
        SamplerSettings(batch_size=0)
    with pytest.raises(UsageError):
        SamplerSettings(value_noise=-1.0)


# ---------------------------------------------------------------- refill: finished rows replaced


def _exact(seqs) -> list[tuple]:
    # repr keeps NaN comparable and every bit of the floats
    return [(s.tokens, repr(s.values), s.complete) for s in seqs]


def test_refill_output_is_bit_identical_across_runs(tiny_model) -> None:
    grammar = Grammar()
    a = _sample(tiny_model, grammar, 14, 1.2, seed=21, batch_size=4)
    b = _sample(tiny_model, grammar, 14, 1.2, seed=21, batch_size=4)
    assert _exact(a) == _exact(b)
    assert all(s.complete for s in a)


def test_refill_gives_the_sequences_of_the_cohort_and_no_cache_samplers(tiny_model) -> None:
    """A sequence's draws come from its own generator: batch size, refill and the cache do not
    change it (up to float rounding of the values)."""
    grammar = Grammar()
    refill_stats, cohort_stats = SamplingStats(), SamplingStats()
    refill = sample_sequences(tiny_model, grammar, 14, 1.2, torch.Generator().manual_seed(21),
                              SamplerSettings(batch_size=4), stats=refill_stats)
    cohort = sample_sequences(tiny_model, grammar, 14, 1.2, torch.Generator().manual_seed(21),
                              SamplerSettings(batch_size=4, refill=False), stats=cohort_stats)
    no_cache = _sample(tiny_model, grammar, 14, 1.2, seed=21, batch_size=5, use_cache=False)
    # refill really happened: one run of steps, fewer forward calls than four cohorts
    assert len(refill_stats.per_cohort_steps) == 1 and len(cohort_stats.per_cohort_steps) == 4
    assert refill_stats.forward_calls < cohort_stats.forward_calls
    for other in (cohort, no_cache):
        for a, b in zip(refill, other, strict=True):
            assert a.tokens == b.tokens
            assert a.values == pytest.approx(b.values, abs=1e-4, nan_ok=True)


@pytest.mark.parametrize("head", ["mixture", "regression"])
def test_refilled_sequences_replay_exactly_on_a_full_forward(tiny_model, tiny_paper_model, head) -> None:
    """KV cache with refill vs recompute: each sequence, replayed alone with a no-cache forward of
    its whole prefix (and the kinds of its slots) and its own generator, draws the same token at
    every step and the same value at every <num>."""
    from matra_hpc.model.slots import COORD, repulsion_context, sequence_cell_atoms, sequence_slot_kinds
    from matra_hpc.sample.sampler import (
        _admissible_value,
        _base_seed,
        _draw_mixture_value,
        _draw_tokens,
        _into_range,
        _is_coordinate,
        sequence_rng,
    )

    grammar = Grammar()
    model = tiny_model if head == "mixture" else tiny_paper_model
    temperature = 1.3
    seqs = _sample(model, grammar, 10, temperature, seed=17, batch_size=3)
    base = _base_seed(torch.Generator().manual_seed(17))
    replayed_values = repelled = 0
    for index, seq in enumerate(seqs):
        rng = sequence_rng(base, index)
        state = grammar.new_states(1)[0]
        tokens = torch.tensor([[model.config.bos_id] + seq.tokens[:-1]])
        values = torch.tensor([[math.nan] + seq.values[:-1]], dtype=torch.float32)
        kinds = torch.from_numpy(sequence_slot_kinds(seq.tokens)).long()[None]  # next slot of each input
        with torch.no_grad():
            logits, cont = model(tokens, values, kinds=kinds)
        for t, (token, value) in enumerate(zip(seq.tokens, seq.values, strict=True)):
            allowed = torch.from_numpy(grammar.masks([state]))
            u = torch.tensor([rng.random()], dtype=torch.float64)
            assert int(_draw_tokens(logits[0, t : t + 1].float(), allowed, temperature, u)[0]) == token
            if token == model.config.num_id:
                lo, hi = grammar.value_range(state)
                periodic = _is_coordinate(lo, hi)
                if head == "mixture":
                    repel = repulsion_context(seq.tokens[:t], seq.values[:t])
                    raw = _draw_mixture_value(model.mixture, cont[0, t].double().numpy(), int(kinds[0, t]),
                                              temperature, rng, grammar, state, lo, hi, periodic,
                                              int(sequence_cell_atoms(seq.tokens[:t])), repel)[0]
                    repelled += bool(repel[0]) and int(kinds[0, t]) == COORD
                else:
                    raw = _into_range(float(cont[0, t]), lo, hi, periodic=periodic)
                assert _admissible_value(grammar, state, raw, lo, hi, rng) == pytest.approx(value, abs=1e-4)
                replayed_values += 1
            grammar.advance(state, token, value)
        assert grammar.is_complete(state) == seq.complete
    assert replayed_values > 0
    assert head == "regression" or repelled > 0  # repelled draws were replayed too


def test_refill_keeps_the_batch_busier_than_cohorts(tiny_model) -> None:
    grammar = Grammar()
    occupancy = {}
    for refill in (True, False):
        stats = SamplingStats()
        sample_sequences(tiny_model, grammar, 32, 1.0, torch.Generator().manual_seed(2),
                         SamplerSettings(batch_size=8, refill=refill), stats=stats)
        assert 0.0 < stats.mean_occupancy <= 1.0
        occupancy[refill] = stats.mean_occupancy
    assert occupancy[True] > occupancy[False]


def test_refill_with_the_length_guard_cuts_and_refills(hostile_model) -> None:
    stats = SamplingStats()
    seqs = sample_sequences(hostile_model, Grammar(), 12, 1.3, torch.Generator().manual_seed(4),
                            SamplerSettings(batch_size=4, max_length=20), stats=stats)
    cut = [s for s in seqs if not s.complete]
    assert cut and all(len(s.tokens) == 20 for s in cut)
    for seq in seqs:
        if seq.complete:
            assert Grammar().accepts(TokenSequence(tokens=seq.tokens, values=seq.values))
