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

Determinism: one ``torch.Generator`` per call (seeded by the caller), one uniform draw per active
row per step, in row order, on the CPU; the batch layout depends only on ``n`` and
``batch_size``. The same seed gives bit-identical sequences in whichever process runs it (same
device kind and thread count), and the same tokens with or without the KV cache (the two paths
differ only by float rounding of the logits and values).

Batching: rows are sampled in cohorts of ``batch_size``; finished rows leave the batch (the KV
cache is compacted to the rows still running once an eighth of the batch has finished), so
compute follows the live rows. Refilling a freed row with a new sequence would need per-row
positions in the model's KV cache, which it does not have (every row sits at one position).

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
    """False recomputes the whole prefix every step (the benchmark's baseline)."""

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
    """What a sampling call cost: forward calls and row-steps (batch rows x positions)."""

    forward_calls: int = 0
    row_steps: int = 0
    per_cohort_steps: list[int] = field(default_factory=list)
    record_steps: bool = False
    """Also log (batch rows, input positions, forward seconds) per step (for benchmarks)."""
    steps: list[tuple[int, int, float]] = field(default_factory=list)


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
    """Sample ``n`` sequences at ``temperature``; row ``i`` is cohort ``i // batch_size``.

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
    out: list[SampledSequence] = []
    for start in range(0, n, settings.batch_size):
        rows = min(settings.batch_size, n - start)
        out.extend(_sample_cohort(model, grammar, rows, temperature, generator, settings, max_length,
                                  torch.device(device), stats))
    return out


def _sample_cohort(
    model: torch.nn.Module,
    grammar,
    rows: int,
    temperature: float,
    generator: torch.Generator,
    settings: SamplerSettings,
    max_length: int,
    device: torch.device,
    stats: SamplingStats | None,
) -> list[SampledSequence]:
    num_id, bos_id, pad_id = model.config.num_id, model.config.bos_id, model.config.pad_id
    dtype = next(model.parameters()).dtype
    states = grammar.new_states(rows)
    tokens: list[list[int]] = [[] for _ in range(rows)]
    values: list[list[float]] = [[] for _ in range(rows)]
    complete = [False] * rows
    running = [True] * rows
    slots = list(range(rows))  # cohort row held by each batch slot of the model input

    cache = model.new_kv_cache(rows, max_length, device, dtype) if settings.use_cache else None
    # Model input of every slot: the next position only (cache) or the whole prefix.
    step_tokens = torch.full((rows, 1), bos_id, dtype=torch.long, device=device)
    step_values = torch.full((rows, 1), math.nan, dtype=torch.float32, device=device)
    steps = 0
    while True:
        live = [j for j, r in enumerate(slots) if running[r]]  # slots still sampling, in row order
        if not live:
            break
        started = time.perf_counter()
        logits, cont = model(step_tokens, step_values, kv_cache=cache)
        last_logits, last_cont = logits[:, -1, :], cont[:, -1]
        if len(live) < len(slots):
            live_idx = torch.tensor(live, dtype=torch.long, device=device)
            last_logits, last_cont = last_logits.index_select(0, live_idx), last_cont.index_select(0, live_idx)
        last_cont = last_cont.double().cpu().numpy()  # (b,); waits for the device
        if stats is not None:
            stats.forward_calls += 1
            stats.row_steps += step_tokens.shape[0] * step_tokens.shape[1]
            if stats.record_steps:
                stats.steps.append((step_tokens.shape[0], steps + 1, time.perf_counter() - started))
        steps += 1
        live_rows = [slots[j] for j in live]
        allowed = torch.from_numpy(np.ascontiguousarray(grammar.masks([states[r] for r in live_rows]))).to(device)
        chosen = _draw_tokens(last_logits.float(), allowed, temperature, generator)
        noise = None
        if settings.value_noise > 0:
            noise = torch.randn(len(live), generator=generator, dtype=torch.float64).numpy()

        next_tokens = np.full(len(slots), pad_id, dtype=np.int64)
        next_values = np.full(len(slots), math.nan)
        for i, (j, r) in enumerate(zip(live, live_rows, strict=True)):
            token = int(chosen[i])
            value = math.nan
            if token == num_id:
                lo, hi = grammar.value_range(states[r])
                raw = float(last_cont[i])
                if noise is not None:
                    raw += settings.value_noise * temperature * float(noise[i])
                value = _into_range(raw, lo, hi, periodic=_is_coordinate(lo, hi))
                value = _admissible_value(grammar, states[r], value, lo, hi, generator)
            grammar.advance(states[r], token, value)
            tokens[r].append(token)
            values[r].append(value)
            next_tokens[j], next_values[j] = token, value
            if grammar.is_complete(states[r]):
                complete[r], running[r] = True, False
            elif len(tokens[r]) >= max_length:
                running[r] = False  # cut by the length guard, left incomplete

        new_tokens = torch.from_numpy(next_tokens).to(device)[:, None]
        new_values = torch.from_numpy(next_values).to(device=device, dtype=torch.float32)[:, None]
        if cache is not None:
            step_tokens, step_values = new_tokens, new_values
        else:
            step_tokens = torch.cat([step_tokens, new_tokens], dim=1)
            step_values = torch.cat([step_values, new_values], dim=1)
        # Finished rows ride along (their outputs ignored) until an eighth of the batch is
        # finished: compacting the KV cache copies all of it, so not on every finished row.
        keep = [j for j, r in enumerate(slots) if running[r]]
        if keep and len(slots) - len(keep) >= max(1, len(slots) // 8):
            keep_idx = torch.tensor(keep, dtype=torch.long, device=device)
            step_tokens = step_tokens.index_select(0, keep_idx)
            step_values = step_values.index_select(0, keep_idx)
            if cache is not None:
                cache.select(keep_idx)
            slots = [slots[j] for j in keep]
    if stats is not None:
        stats.per_cohort_steps.append(steps)
    return [SampledSequence(tokens[r], values[r], complete[r]) for r in range(rows)]


def _draw_tokens(
    logits: torch.Tensor, allowed: torch.Tensor, temperature: float, generator: torch.Generator
) -> torch.Tensor:
    """One token per row from softmax(logits / T) over the allowed tokens (inverse CDF)."""
    if not bool(allowed.any(dim=1).all()):
        raise RuntimeError("the grammar allows no token for a running sequence")
    scaled = (logits.double() / temperature).masked_fill(~allowed, -math.inf)
    probs = torch.softmax(scaled, dim=1)  # (b, V); exactly 0 where not allowed
    cdf = torch.cumsum(probs, dim=1)
    u = torch.rand(logits.shape[0], generator=generator, dtype=torch.float64).to(logits.device)
    target = (u * cdf[:, -1])[:, None]
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


def _admissible_value(grammar, state, value: float, lo: float, hi: float, generator: torch.Generator) -> float:
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
        u = float(torch.rand(1, generator=generator, dtype=torch.float64))
        candidate = _into_range(lo + (hi - lo) * u, lo, hi, periodic=periodic)
        if grammar.value_allowed(state, candidate):
            return candidate
    raise RuntimeError(f"no value in [{lo}, {hi}) allowed by the grammar after {MAX_REDRAWS} redraws")


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
