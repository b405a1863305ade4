"""Grammar-constrained, KV-cached, batched sampling of token sequences (paper II.2, eq. 1).

Discrete tokens are drawn from ``softmax(logits / T)`` restricted to the tokens the grammar
allows next, at every step: every finished sequence is grammatical, hence decodable. A ``<num>``
takes the continuous head's prediction (deterministic, as in the paper), optionally plus
Gaussian noise of standard deviation ``value_noise * T`` (off by default), then is brought into
the grammar's range for that value: fractional coordinates are *wrapped* into [0, 1) (they are
periodic, so wrapping keeps the site where the model put it); lattice lengths and angles are
*clamped* (they are not periodic). A coordinate the grammar still refuses (within a hair of a
special position or of an earlier atom) is nudged by 1e-3 steps, else redrawn uniformly from
the seeded generator.

Determinism: every sequence draws from its own generator (numpy PCG64), seeded from one draw of
the caller's ``torch.Generator`` and the sequence's index in the call, and consumed only by that
sequence (one uniform per token, plus its value noise and redraws), on the CPU. A sequence's
tokens thus depend only on the seed, its index and the model's outputs for its own prefix: not on
the batch size, the slot it runs in, refill or compaction, or the process that runs the call. The
same seed gives bit-identical sequences in whichever process runs it (same device kind and thread
count), and the same tokens with or without the KV cache, with or without refill (the paths
differ only by float rounding of the logits and values).

Batching (``SamplerSettings.refill``, default on): ``batch_size`` slots; whenever a sequence
finishes, its slot takes the next sequence at the next step (free slots in slot order take the
sequences in index order), so the device keeps a full batch until the last sequences have
started. The KV cache holds every row at its own length; a new sequence resets its row to
position 0. Without refill (and always without the cache) sequences run in cohorts of
``batch_size`` whose finished rows leave the batch and are not replaced. In both paths finished
rows ride along until an eighth of the batch is finished, then the KV cache is compacted to the
rows still running (refill: only once no sequence is left to start). ``SamplingStats`` reports
the mean batch occupancy: the fraction of the ``min(batch_size, n)`` slots that hold a running
sequence, per forward step.

Length guard: a row still running after ``max_length`` tokens is cut and returned with
``complete=False``; callers count it as an invalid sequence.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from matra_hpc.errors import UsageError
from matra_hpc.model.slots import (
    COORD,
    LENGTH,
    NONE,
    grammar_slot_kind,
    sequence_cell_atoms,
    site_repulsion_many,
)


@dataclass(frozen=True)
class SamplerSettings:
    batch_size: int = 256
    """Rows per cohort; also the unit of the fixed batch layout."""
    max_length: int | None = None
    """Length guard in tokens (``<end>`` included); None: the grammar's bound, capped by what
    the model's positions allow."""
    value_noise: float = 0.0
    """Gaussian noise on continuous values, sigma = value_noise * T (0: deterministic, as in the
    paper)."""
    use_cache: bool = True
    """False recomputes the whole prefix every step (the benchmark's baseline); implies cohorts."""
    refill: bool = True
    """A finished sequence's slot takes the next sequence (needs the KV cache); False: cohorts
    whose finished rows are dropped, never replaced (the benchmark's baseline)."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise UsageError(f"batch size must be >= 1, got {self.batch_size}")
        if self.max_length is not None and self.max_length < 1:
            raise UsageError(f"max length must be >= 1, got {self.max_length}")
        if not (self.value_noise >= 0 and math.isfinite(self.value_noise)):
            raise UsageError(f"value noise must be a finite number >= 0, got {self.value_noise}")


@dataclass
class SampledSequence:
    tokens: list[int]
    values: list[float]
    complete: bool
    """False when the length guard cut the sequence before ``<end>``."""


@dataclass
class SamplingStats:
    """What a sampling call cost: forward calls, row-steps (batch rows x positions) and how full
    the batch was."""

    forward_calls: int = 0
    row_steps: int = 0
    busy_row_steps: int = 0
    """Rows holding a running sequence, summed over forward steps."""
    occupancy_sum: float = 0.0
    """Sum over forward steps of busy rows / ``min(batch_size, n)`` slots."""
    per_cohort_steps: list[int] = field(default_factory=list)
    record_steps: bool = False
    """Also log (batch rows, longest prefix, forward seconds) per step (for benchmarks)."""
    steps: list[tuple[int, int, float]] = field(default_factory=list)

    @property
    def mean_occupancy(self) -> float:
        """Mean fraction of the batch's slots busy with a running sequence, per forward step."""
        return self.occupancy_sum / self.forward_calls if self.forward_calls else 0.0


def effective_max_length(model: torch.nn.Module, grammar, settings: SamplerSettings) -> int:
    """The length guard: the settings' value, else the grammar's bound; never beyond the model."""
    bound = settings.max_length if settings.max_length is not None else grammar.max_length()
    # The model sees <bos> plus all tokens but the last, so max_len positions give max_len tokens.
    return max(1, min(bound, model.config.max_len))


@torch.no_grad()
def sample_sequences(
    model: torch.nn.Module,
    grammar,
    n: int,
    temperature: float,
    generator: torch.Generator,
    settings: SamplerSettings = SamplerSettings(),
    *,
    device: str | torch.device = "cpu",
    stats: SamplingStats | None = None,
) -> list[SampledSequence]:
    """Sample ``n`` sequences at ``temperature``, returned in index order.

    ``grammar`` carries the condition (stability prefix, elements, composition, groups,
    Wyckoff positions): its mask enforces it at every step.
    """
    if n < 0:
        raise UsageError(f"number of sequences must be >= 0, got {n}")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise UsageError(f"temperature must be a finite number > 0, got {temperature}")
    if generator.device.type != "cpu":
        raise UsageError("the sampling generator must live on the CPU (reproducible on any device)")
    model.eval()
    max_length = effective_max_length(model, grammar, settings)
    run = _Run(model, grammar, n, temperature, _base_seed(generator), settings, max_length, torch.device(device), stats)
    if settings.refill and settings.use_cache:
        _sample_refill(run)
    else:
        for start in range(0, n, settings.batch_size):
            _sample_cohort(run, list(range(start, min(start + settings.batch_size, n))))
    return [SampledSequence(run.tokens[i], run.values[i], run.complete[i]) for i in range(n)]


def _base_seed(generator: torch.Generator) -> int:
    """One draw from the caller's generator: the entropy every sequence's own generator derives from."""
    return int(torch.randint(0, 2**62, (1,), generator=generator, dtype=torch.int64))


def sequence_rng(base_seed: int, index: int) -> np.random.Generator:
    """Sequence ``index``'s own generator: its draws depend on nothing but (base seed, index) and
    its own history, so neither batch composition, slot, refill nor rank can change them."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(base_seed, spawn_key=(index,))))


class _Run:
    """The sequences of one call: their grammar states, generators and what they have so far."""

    def __init__(self, model, grammar, n: int, temperature: float, base_seed: int, settings: SamplerSettings,
                 max_length: int, device: torch.device, stats: SamplingStats | None) -> None:
        self.model, self.grammar, self.temperature, self.settings = model, grammar, temperature, settings
        self.base_seed, self.max_length, self.device, self.stats = base_seed, max_length, device, stats
        self.dtype = next(model.parameters()).dtype
        self.tokens: list[list[int]] = [[] for _ in range(n)]
        self.values: list[list[float]] = [[] for _ in range(n)]
        self.complete = [False] * n
        self.states: dict[int, object] = {}  # running sequences only
        self.rngs: dict[int, np.random.Generator] = {}
        self.kinds: dict[int, int] = {}  # kind of each running sequence's next slot
        self.atoms: dict[int, int] = {}  # atoms in the cell, once a sequence reaches its lattice
        self.mixture = getattr(model, "mixture", None)

    def start(self, index: int) -> None:
        self.states[index] = self.grammar.new_states(1)[0]
        self.rngs[index] = sequence_rng(self.base_seed, index)
        self.kinds[index] = NONE  # a sequence never starts with a value

    def cell_atoms(self, index: int) -> int:
        """Atoms in sequence ``index``'s cell (its composition block is complete before any length)."""
        if index not in self.atoms:
            self.atoms[index] = int(sequence_cell_atoms(self.tokens[index]))
        return self.atoms[index]

    def forward(self, step_tokens, step_values, step_kinds, cache, live: list[int], capacity: int):
        """One model step over every slot; returns the last position's outputs of the live slots
        (logits, and the value head's output: (b,) numbers or (b, P) mixture parameters)."""
        started = time.perf_counter()
        busy = len(live)
        logits, cont = self.model(step_tokens, step_values, kv_cache=cache, kinds=step_kinds)
        last_logits, last_cont = logits[:, -1, :], cont[:, -1]
        if busy < step_tokens.shape[0]:  # idle slots ran too (fixed batch layout): drop their outputs
            live_idx = torch.tensor(live, dtype=torch.long, device=last_logits.device)
            last_logits, last_cont = last_logits.index_select(0, live_idx), last_cont.index_select(0, live_idx)
        last_cont_host = last_cont.double().cpu().numpy()  # (b,) or (b, P); waits for the device
        if self.stats is not None:
            s = self.stats
            s.forward_calls += 1
            s.row_steps += step_tokens.shape[0] * step_tokens.shape[1]
            s.busy_row_steps += busy
            s.occupancy_sum += busy / capacity
            if s.record_steps:
                s.steps.append((step_tokens.shape[0], step_tokens.shape[1] if cache is None else
                                int(cache.lengths.max()), time.perf_counter() - started))
        return last_logits, last_cont_host

    def advance(
        self, seqs: list[int], last_logits: torch.Tensor, last_cont: np.ndarray
    ) -> list[tuple[int, float, int, bool]]:
        """Draw the next token (and value) of each sequence from its row of the model's output;
        returns (token, value, kind of the slot after it, still running) per sequence."""
        grammar, settings, temperature = self.grammar, self.settings, self.temperature
        allowed = torch.from_numpy(np.ascontiguousarray(grammar.masks([self.states[i] for i in seqs])))
        u = torch.tensor([self.rngs[i].random() for i in seqs], dtype=torch.float64)
        # a list: indexing a tensor element by element costs microseconds per row and step
        chosen = _draw_tokens(last_logits.float(), allowed.to(last_logits.device), temperature, u).tolist()
        num_id = self.model.config.num_id
        repels: dict[int, tuple[list[float], list[float]]] = {}
        if self.mixture is not None and self.mixture.repulsion:
            # the last free value of a site: its repulsion context, all such rows at once, from
            # the grammar's own record of the sites
            last = [k for k, i in enumerate(seqs) if chosen[k] == num_id
                    and self.kinds[i] == COORD and self.states[i].coords_left == 1]
            if last:
                found = site_repulsion_many([grammar.site_context(self.states[seqs[k]]) for k in last])
                repels = dict(zip(last, found, strict=True))
        drawn: dict[int, float] = {}
        if self.mixture is not None:
            # every row's first draw from the mixture in one call (per-row generators, same draws)
            value_rows = [k for k in range(len(seqs)) if chosen[k] == num_id]
            if value_rows:
                kinds = np.array([self.kinds[seqs[k]] for k in value_rows])
                atoms = np.array([self.cell_atoms(seqs[k]) if kind == LENGTH else 1
                                  for k, kind in zip(value_rows, kinds, strict=True)])
                values = self.mixture.sample_many(last_cont[value_rows], kinds, temperature,
                                                  [self.rngs[seqs[k]] for k in value_rows], atoms,
                                                  [repels.get(k) for k in value_rows])
                drawn = dict(zip(value_rows, values.tolist(), strict=True))
        out = []
        for k, i in enumerate(seqs):
            state, rng = self.states[i], self.rngs[i]
            token = chosen[k]
            value = math.nan
            if token == num_id:
                lo, hi = grammar.value_range(state)
                periodic = _is_coordinate(lo, hi)
                if self.mixture is not None:
                    kind = self.kinds[i]
                    value = _into_range(drawn[k], lo, hi, periodic=periodic)
                    ok = grammar.value_allowed(state, value)
                    if not ok:  # refused: the model draws again (MODEL_REDRAWS in all)
                        atoms = self.cell_atoms(i) if kind == LENGTH else 1
                        value, ok = _draw_mixture_value(self.mixture, last_cont[k], kind, temperature, rng, grammar,
                                                        state, lo, hi, periodic, atoms, repels.get(k),
                                                        draws=MODEL_REDRAWS - 1)
                else:
                    raw = float(last_cont[k])
                    if settings.value_noise > 0:
                        raw += settings.value_noise * temperature * float(rng.standard_normal())
                    value, ok = _into_range(raw, lo, hi, periodic=periodic), False
                if not ok:
                    value = _admissible_value(grammar, state, value, lo, hi, rng)
            grammar.advance(state, token, value)
            self.tokens[i].append(token)
            self.values[i].append(value)
            running = True
            if grammar.is_complete(state):
                self.complete[i], running = True, False
            elif len(self.tokens[i]) >= self.max_length:
                running = False  # cut by the length guard, left incomplete
            kind = NONE
            if running:
                kind = self.kinds[i] = grammar_slot_kind(grammar, state)
            else:
                del self.states[i], self.rngs[i], self.kinds[i]
                self.atoms.pop(i, None)
            out.append((token, value, kind, running))
        return out


def _sample_cohort(run: _Run, seqs: list[int]) -> None:
    """The compaction path: one cohort, finished rows dropped from the batch, never replaced."""
    device, config = run.device, run.model.config
    rows = len(seqs)
    capacity = min(run.settings.batch_size, len(run.tokens))
    for i in seqs:
        run.start(i)
    slots = list(seqs)  # sequence held by each batch slot of the model input
    running = set(seqs)
    cache = run.model.new_kv_cache(rows, run.max_length, device, run.dtype) if run.settings.use_cache else None
    # Model input of every slot: the next position only (cache) or the whole prefix.
    step_tokens = torch.full((rows, 1), config.bos_id, dtype=torch.long, device=device)
    step_values = torch.full((rows, 1), math.nan, dtype=torch.float32, device=device)
    step_kinds = torch.full((rows, 1), NONE, dtype=torch.long, device=device)
    steps = 0
    while True:
        live = [j for j, i in enumerate(slots) if i in running]  # slots still sampling, in slot order
        if not live:
            break
        last_logits, last_cont = run.forward(step_tokens, step_values, step_kinds, cache, live, capacity)
        steps += 1
        live_seqs = [slots[j] for j in live]
        next_tokens = np.full(len(slots), config.pad_id, dtype=np.int64)
        next_values = np.full(len(slots), math.nan)
        next_kinds = np.full(len(slots), NONE, dtype=np.int64)
        for j, i, (token, value, kind, still) in zip(live, live_seqs,
                                                     run.advance(live_seqs, last_logits, last_cont), strict=True):
            next_tokens[j], next_values[j], next_kinds[j] = token, value, kind
            if not still:
                running.discard(i)
        new_tokens = torch.from_numpy(next_tokens).to(device)[:, None]
        new_values = torch.from_numpy(next_values).to(device=device, dtype=torch.float32)[:, None]
        new_kinds = torch.from_numpy(next_kinds).to(device)[:, None]
        if cache is not None:
            step_tokens, step_values, step_kinds = new_tokens, new_values, new_kinds
        else:
            step_tokens = torch.cat([step_tokens, new_tokens], dim=1)
            step_values = torch.cat([step_values, new_values], dim=1)
            step_kinds = torch.cat([step_kinds, new_kinds], dim=1)
        # Finished rows ride along (their outputs ignored) until an eighth of the batch is
        # finished: compacting the KV cache copies all of it, so not on every finished row.
        keep = [j for j, i in enumerate(slots) if i in running]
        if keep and len(slots) - len(keep) >= max(1, len(slots) // 8):
            keep_idx = torch.tensor(keep, dtype=torch.long, device=device)
            step_tokens = step_tokens.index_select(0, keep_idx)
            step_values = step_values.index_select(0, keep_idx)
            step_kinds = step_kinds.index_select(0, keep_idx)
            if cache is not None:
                cache.select(keep_idx)
            slots = [slots[j] for j in keep]
    if run.stats is not None:
        run.stats.per_cohort_steps.append(steps)


def _sample_refill(run: _Run) -> None:
    """The refill path: a freed slot takes the next sequence at the next step.

    Order of entry: at every step the free slots, in slot order, take the next sequences in index
    order (sequence 0..B-1 fill slots 0..B-1 at step 0). Only once no sequence is left to start
    do finished slots get compacted away, as in the cohort path.
    """
    device, config = run.device, run.model.config
    n = len(run.tokens)
    capacity = min(run.settings.batch_size, n)
    if capacity == 0:
        return
    cache = run.model.new_kv_cache(capacity, run.max_length, device, run.dtype)
    slots: list[int | None] = [None] * capacity  # sequence in each slot, None when free
    next_tokens = np.full(capacity, config.pad_id, dtype=np.int64)
    next_values = np.full(capacity, math.nan)
    next_kinds = np.full(capacity, NONE, dtype=np.int64)
    pending = 0
    steps = 0
    while True:
        free = [j for j, i in enumerate(slots) if i is None]
        for j in free:
            if pending == n:
                break
            slots[j] = pending
            run.start(pending)
            next_tokens[j], next_values[j], next_kinds[j] = config.bos_id, math.nan, NONE
            pending += 1
        live = [j for j, i in enumerate(slots) if i is not None]
        if not live:
            break
        if free:
            # New sequences start at position 0; idle slots too, so they never run past the cache.
            cache.reset(free)
        step_tokens = torch.from_numpy(next_tokens).to(device)[:, None]
        step_values = torch.from_numpy(next_values).to(device=device, dtype=torch.float32)[:, None]
        step_kinds = torch.from_numpy(next_kinds).to(device)[:, None]
        last_logits, last_cont = run.forward(step_tokens, step_values, step_kinds, cache, live, capacity)
        steps += 1
        live_seqs = [slots[j] for j in live]
        next_tokens[:], next_values[:], next_kinds[:] = config.pad_id, math.nan, NONE
        for j, (token, value, kind, still) in zip(live, run.advance(live_seqs, last_logits, last_cont), strict=True):
            next_tokens[j], next_values[j], next_kinds[j] = token, value, kind
            if not still:
                slots[j] = None
        if pending == n:
            keep = [j for j, i in enumerate(slots) if i is not None]
            if keep and len(slots) - len(keep) >= max(1, len(slots) // 8):
                cache.select(torch.tensor(keep, dtype=torch.long))
                slots = [slots[j] for j in keep]
                next_tokens, next_values, next_kinds = next_tokens[keep], next_values[keep], next_kinds[keep]
    if run.stats is not None:
        run.stats.per_cohort_steps.append(steps)


def _draw_tokens(logits: torch.Tensor, allowed: torch.Tensor, temperature: float, u: torch.Tensor) -> torch.Tensor:
    """One token per row from softmax(logits / T) over the allowed tokens, by inverse CDF at the
    row's uniform draw ``u`` (float64, on the CPU)."""
    if not bool(allowed.any(dim=1).all()):
        raise RuntimeError("the grammar allows no token for a running sequence")
    scaled = (logits.double() / temperature).masked_fill(~allowed, -math.inf)
    probs = torch.softmax(scaled, dim=1)  # (b, V); exactly 0 where not allowed
    cdf = torch.cumsum(probs, dim=1)
    target = (u.to(logits.device) * cdf[:, -1])[:, None]
    # First index whose cdf exceeds the target: never a disallowed token, whose probability is 0.
    chosen = torch.searchsorted(cdf, target, right=True).squeeze(1).clamp_(max=logits.shape[1] - 1)
    ok = allowed.gather(1, chosen[:, None]).squeeze(1)
    if not bool(ok.all()):
        # Only reachable through rounding at the very top of the cdf: take the last allowed token.
        last_allowed = (allowed.long() * torch.arange(allowed.shape[1], device=allowed.device)).argmax(dim=1)
        chosen = torch.where(ok, chosen, last_allowed)
    return chosen.cpu()


# A refused coordinate sits within a hair (the grammar's COINCIDE_TOL, 2e-4) of a special
# position or an earlier atom: step this far from it, alternating sides, before redrawing.
NUDGE = 1e-3
MAX_NUDGES = 8
MAX_REDRAWS = 64


def _admissible_value(grammar, state, value: float, lo: float, hi: float, rng: np.random.Generator) -> float:
    """The model's value if the grammar allows it, else the nearest allowed nudge, else a redraw.

    Nudging keeps the model's choice to within a few thousandths (the bond check then judges the
    structure); the uniform redraw from the generator is a last resort and stays seeded.
    """
    if grammar.value_allowed(state, value):
        return value
    periodic = _is_coordinate(lo, hi)
    for k in range(1, MAX_NUDGES + 1):
        for sign in (1.0, -1.0):
            candidate = _into_range(value + sign * k * NUDGE, lo, hi, periodic=periodic)
            if grammar.value_allowed(state, candidate):
                return candidate
    for _ in range(MAX_REDRAWS):
        u = float(rng.random())
        candidate = _into_range(lo + (hi - lo) * u, lo, hi, periodic=periodic)
        if grammar.value_allowed(state, candidate):
            return candidate
    raise RuntimeError(f"no value in [{lo}, {hi}) allowed by the grammar after {MAX_REDRAWS} redraws")


# Draws from the model's own distribution before the nudge-and-redraw fallback of a refused value.
MODEL_REDRAWS = 8


def _draw_mixture_value(mixture, params: np.ndarray, kind: int, temperature: float, rng: np.random.Generator,
                        grammar, state, lo: float, hi: float, periodic: bool, atoms: int = 1,
                        repel: tuple[list[float], list[float]] | None = None,
                        draws: int = MODEL_REDRAWS) -> tuple[float, bool]:
    """A value drawn from the mixture head at the temperature, brought into the grammar's range,
    and whether the grammar allowed it (the caller need not ask again): a refused value (a
    coordinate on a special position or an earlier atom) is drawn again from the model, ``draws``
    tries in all, before ``_admissible_value`` takes over."""
    value = lo
    for _ in range(draws):
        value = _into_range(mixture.sample(params, kind, temperature, rng, atoms, repel), lo, hi, periodic=periodic)
        if grammar.value_allowed(state, value):
            return value, True
    return value, False


def _is_coordinate(lo: float, hi: float) -> bool:
    # The grammar gives exactly [0, 1) for free coordinates; lattice ranges start at >= 1 A or 30 deg.
    return lo == 0.0 and hi == 1.0


def _into_range(value: float, lo: float, hi: float, *, periodic: bool) -> float:
    if not math.isfinite(value):
        value = lo
    if periodic:
        width = hi - lo
        wrapped = lo + (value - lo) % width
        # float modulo can land exactly on hi for tiny negative inputs
        return lo if wrapped >= hi else wrapped
    return min(max(value, lo), hi)
