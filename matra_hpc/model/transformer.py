"""The Matra-Genoa transformer: one decoder-only model over the hybrid token sequence.

Paper sections II.2 and IV.2. The input of the model is ``<bos>`` followed by the tokens of a
``TokenSequence``; ``values`` runs parallel to ``tokens`` and holds the continuous value of every
``<num>`` token (NaN elsewhere). At every position the model predicts the next token (logits over
the vocabulary, trained with cross-entropy) and, for positions whose next token is ``<num>``, the
next continuous value. Two value heads (``ModelConfig.value_head``): ``regression`` (the paper's:
``cont_pred`` in the values' own units, trained with the MSE of ``cont_loss_scale``) and
``mixture`` (per kind of value a mixture distribution, trained by negative log-likelihood and
sampled at the temperature; ``ValueMixture``). With ``slot_kinds`` the model is told the kind of
the next value (``model/slots.py``). ``loss = CE + cont_loss_weight * value loss``.

Architecture (paper IV.2):
- discrete tokens: learned embeddings; ``<num>`` tokens: Gaussian embeddings of the value, a
  linear part over evenly spaced centres of ``v`` and a log part over ``|log(|v| + 1e-20)|``,
  concatenated to ``d`` (no learned weights when ``2 * n_gauss == d``, as in the paper);
- plus the sinusoidal positional encoding;
- ``n_layer`` pre-LayerNorm blocks: ``h = x + MHA(LN(x))``, ``x' = h + MLP(LN(h))``, causal
  multi-head attention through ``F.scaled_dot_product_attention``, MLP ``d -> 4d -> d`` with GELU;
- a final LayerNorm, then two heads: ``Linear(d, V)`` for the logits and ``Linear(d, 1)`` for the
  continuous value.

API the sampler relies on:
- ``MatraTransformer.forward(tokens[B, T], values[B, T], kv_cache=None) -> (logits[B, T, V],
  cont_pred[B, T])``. Without a cache, positions are ``0..T-1``. With a cache, ``tokens`` are the
  new positions only: row ``b`` holds positions ``cache.lengths[b] .. cache.lengths[b] + T - 1``
  (each row has its own length, its own positional encoding and attends only to its own valid
  entries), the cache stores their keys/values and every row's length advances by ``T``.
- ``MatraTransformer.new_kv_cache(batch_size, max_len, device, dtype) -> KVCache``;
  ``KVCache.select(rows)`` keeps only some rows (e.g. to drop finished sequences);
  ``KVCache.reset(rows)`` empties rows so a new sequence can start there (``<bos>`` at 0).
- ``load_model(path) -> (model, metadata)`` (in ``checkpoint.py``) reads a checkpoint written by
  the training stage (safetensors weights + JSON metadata; nothing is unpickled).

Shape letters: B batch, T time (positions), C = d_model, nh heads, hs head size, V vocabulary.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from matra_hpc.errors import UsageError
from matra_hpc.model.slots import (
    ANGLE,
    COORD,
    LENGTH,
    N_KINDS,
    NONE,
    VALUE_KINDS,
    sequence_cell_atoms,
    sequence_repulsion,
    sequence_slot_kinds,
)

# Ids pinned by docs/contracts.md section A.
PAD_ID = 0
BOS_ID = 1
END_ID = 2
NUM_ID = 3


@dataclass
class ModelConfig:
    vocab_size: int = 2400
    n_layer: int = 12
    n_head: int = 16
    d_model: int = 512
    max_len: int = 256
    """Longest input (``<bos>`` included) the positional encoding and KV caches are built for."""
    dropout: float = 0.0
    n_gauss: int = 256
    """Centres per Gaussian part (linear and log); ``2 * n_gauss`` features, projected to d if
    that is not d."""
    gauss_lin_range: tuple[float, float] = (0.0, 1.0)
    """Centres of the linear part: fractional coordinates live in [0, 1)."""
    gauss_log_range: tuple[float, float] = (0.0, 6.0)
    """Centres of the log part over |log|v||: lengths up to ~400 A and angles up to 180 degrees
    land inside, as do small fractional coordinates down to ~e^-6."""
    gauss_sigma: float = 1.0
    """Width of every Gaussian in units of its part's centre spacing (one hyperparameter for both
    parts, whose value ranges differ)."""
    mlp_ratio: int = 4
    cont_loss_weight: float = 1.0
    """w in loss = CE + w * MSE."""
    cont_loss_scale: str = "log"
    """``log`` (default): the head works in symlog space, sign(v) * log1p(|v|), where
    fractional coordinates (0..0.7), lattice lengths (~1.4..3) and angles (~4..5) all have
    errors and gradients of order one; ``cont_pred`` is mapped back to the values' units.
    ``relative``: the squared error is divided by max(1, |target|)^2 (its gradient for a
    10 A length is 100x weaker than for a coordinate, and the head was seen not to learn
    lengths at all); ``absolute``: plain MSE in the values' own units, where angle errors of
    degrees would swamp coordinate errors of hundredths."""
    slot_kinds: bool = False
    """Typed value slots: a learned embedding of the kind of the *next* slot (none, coordinate,
    length, angle; ``model/slots.py``) is added to every position's input, so the model knows
    what it predicts (the paper's model does not: False)."""
    value_head: str = "regression"
    """``regression`` (paper): one number per position, trained with the MSE of
    ``cont_loss_scale`` and taken as is by the sampler. ``mixture``: per kind, a mixture of
    ``n_mix`` components in a normalised space (coordinates: von Mises over the period;
    lengths: Gaussians over log length; angles: Gaussians over degrees), trained by negative
    log-likelihood and *sampled* at the temperature (see ``ValueMixture``)."""
    n_mix: int = 8
    """Components per kind of the mixture head."""
    length_log_loc: float = 1.9
    length_log_scale: float = 0.5
    """Lengths enter the mixture head as z = (ln(a / 1 A) - loc) / scale (demo set: 1.93, 0.47)."""
    length_per_atom: bool = False
    """Lengths are first divided by the cube root of the atoms in the cell (the sum of the
    composition's counts, known before any length): z = (ln(a / N^(1/3)) - loc) / scale, so the
    head need not learn how the cell grows with N (demo set: loc 1.03, scale 0.42)."""
    angle_loc: float = 90.0
    angle_scale: float = 20.0
    """Angles enter the mixture head as (degrees - loc) / scale."""
    coord_repulsion: bool = False
    """The mixture head's coordinate density also keeps the last free value of a site away from
    the values that would put the site onto an earlier atom (any image of an earlier site under the
    group, ``model/slots.py: repulsion_context``): density * exp(-lambda * sum_j w_j k(x - r_j)),
    normalised over the period, with lambda and the kernel's width predicted per position and
    learned from the data (``ValueMixture``). Not a sampler guard: the model's own density."""
    coord_bins: bool = False
    """Each coordinate component keeps to its own stretch of the period: component k is centred
    at (k + 1/2 + r tanh(u)) / n_mix for a predicted u, with r = ``ValueMixture.BIN_REACH``
    (neighbours overlap; the resting centres are generic values, not the special positions 0,
    1/4, 1/2 where an orbit collapses). Picking the stretch is then a softmax over components, which learns like a token;
    free locations instead sit where they start when the target is far (the von Mises gradient
    vanishes half a period away), and the model was seen not to learn coordinates at all."""
    value_loss_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Weights of the value loss of coordinates, lengths and angles (the loss is the weighted
    mean over the values of a batch)."""
    pad_id: int = PAD_ID
    bos_id: int = BOS_ID
    num_id: int = NUM_ID

    def __post_init__(self) -> None:
        # JSON and YAML give lists; keep tuples so configs compare equal after a round trip.
        self.gauss_lin_range = tuple(float(x) for x in self.gauss_lin_range)
        self.gauss_log_range = tuple(float(x) for x in self.gauss_log_range)
        self.value_loss_weights = tuple(float(x) for x in self.value_loss_weights)
        if self.value_head not in ("regression", "mixture"):
            raise UsageError(f"value_head must be regression or mixture, not {self.value_head!r}")
        if self.n_mix < 1 or len(self.value_loss_weights) != 3 or min(self.value_loss_weights) < 0:
            raise UsageError("n_mix must be >= 1 and value_loss_weights three numbers >= 0")
        if self.length_log_scale <= 0 or self.angle_scale <= 0:
            raise UsageError("length_log_scale and angle_scale must be positive")
        if self.d_model % self.n_head:
            raise UsageError(f"d_model={self.d_model} is not a multiple of n_head={self.n_head}")
        if self.cont_loss_scale not in ("log", "relative", "absolute"):
            raise UsageError(f"cont_loss_scale must be log, relative or absolute, not {self.cont_loss_scale!r}")
        if self.vocab_size <= self.num_id:
            raise UsageError(f"vocab_size={self.vocab_size} is too small")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["gauss_lin_range"] = list(self.gauss_lin_range)
        out["gauss_log_range"] = list(self.gauss_log_range)
        out["value_loss_weights"] = list(self.value_loss_weights)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise UsageError(f"unknown model config keys {unknown}; valid keys: {sorted(valid)}")
        return cls(**data)


class KVCache:
    """Keys and values of the positions already seen, for incremental decoding.

    ``k`` and ``v`` are (n_layer, B, nh, max_len, hs); ``lengths`` (B,) int64, on the CPU, is the
    number of valid positions of each row. Entries past a row's length are stale (left by an
    earlier sequence of that row) and masked out of attention.
    """

    def __init__(self, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor | None = None) -> None:
        self.k = k
        self.v = v
        self.lengths = torch.zeros(k.shape[1], dtype=torch.long) if lengths is None else lengths.long().cpu()

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    @property
    def pos(self) -> int:
        """The one length shared by every row (UsageError when rows differ: use ``lengths``)."""
        if self.batch_size == 0:
            return 0
        lo, hi = int(self.lengths.min()), int(self.lengths.max())
        if lo != hi:
            raise UsageError(f"KV cache rows have different lengths ({lo}..{hi}); read cache.lengths")
        return lo

    @pos.setter
    def pos(self, value: int) -> None:
        self.lengths.fill_(int(value))

    def uniform(self) -> bool:
        return self.batch_size == 0 or bool(self.lengths.min() == self.lengths.max())

    def select(self, rows: torch.Tensor) -> KVCache:
        """Keep only ``rows`` (a LongTensor of row indices); returns self, changed in place."""
        self.lengths = self.lengths.index_select(0, rows.cpu())
        rows = rows.to(self.k.device)
        self.k = self.k.index_select(1, rows)
        self.v = self.v.index_select(1, rows)
        return self

    def reset(self, rows: list[int] | torch.Tensor) -> KVCache:
        """Empty ``rows``: their next input is position 0 of a new sequence; returns self."""
        self.lengths[torch.as_tensor(rows, dtype=torch.long)] = 0
        return self


@dataclass
class _CacheStep:
    """Where one forward call's T new positions go in the cache, computed once for all layers."""

    start: int | None
    """The shared first position when every row has the same length, else None."""
    rows: torch.Tensor | None = None  # (B, 1) row index of each new entry
    positions: torch.Tensor | None = None  # (B, T) cache position of each new entry
    key_len: int = 0  # keys attended to: max(length) + T
    mask: torch.Tensor | None = None  # (B, 1, T, key_len), True where a query may look


def sinusoidal_encoding(max_len: int, d: int) -> torch.Tensor:
    """The classic encoding: E[i, k] = sin(i / 10000^(k/d)) for even k, cos(...) for odd k."""
    pos = torch.arange(max_len, dtype=torch.float64)[:, None]  # (T, 1)
    k = torch.arange(d, dtype=torch.float64)[None, :]  # (1, C)
    # Pairs (2j, 2j+1) share the frequency of 2j, so each pair is a rotation of one angle.
    angle = pos / torch.pow(10000.0, (k - k % 2) / d)
    enc = torch.where(k % 2 == 0, torch.sin(angle), torch.cos(angle))
    return enc.float()  # (T, C)


class GaussianEmbedding(nn.Module):
    """Embeds a real value as Gaussian bumps over a linear and a log grid (paper IV.2)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        n = config.n_gauss
        lin = torch.linspace(*config.gauss_lin_range, n)
        log = torch.linspace(*config.gauss_log_range, n)
        self.register_buffer("centres_lin", lin, persistent=False)
        self.register_buffer("centres_log", log, persistent=False)
        self.sigma_lin = config.gauss_sigma * float(lin[1] - lin[0]) if n > 1 else config.gauss_sigma
        self.sigma_log = config.gauss_sigma * float(log[1] - log[0]) if n > 1 else config.gauss_sigma
        self.proj = nn.Linear(2 * n, config.d_model) if 2 * n != config.d_model else None

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        v = v.float()[..., None]  # (B, T, 1); float32 even under autocast: log of tiny values
        x_lin = torch.exp(-((self.centres_lin - v) ** 2) / (2 * self.sigma_lin**2))
        log_v = torch.log(v.abs() + 1e-20).abs()
        x_log = torch.exp(-((self.centres_log - log_v) ** 2) / (2 * self.sigma_log**2))
        x = torch.cat([x_lin, x_log], dim=-1)  # (B, T, 2 * n_gauss)
        return self.proj(x) if self.proj is not None else x


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.out = nn.Linear(config.d_model, config.d_model)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, step: _CacheStep | None = None
    ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        dropout_p = self.dropout if self.training else 0.0
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
        elif step.start is not None:
            start = step.start
            cache.k[layer, :, :, start : start + T] = k.to(cache.k.dtype)
            cache.v[layer, :, :, start : start + T] = v.to(cache.v.dtype)
            k_all = cache.k[layer, :, :, : start + T].to(q.dtype)  # (B, nh, start+T, hs)
            v_all = cache.v[layer, :, :, : start + T].to(q.dtype)
            if T == 1:
                mask = None  # the one new position sees every earlier one
            else:
                # New query i sits at position start+i and sees keys 0..start+i.
                key_pos = torch.arange(start + T, device=x.device)
                query_pos = torch.arange(start, start + T, device=x.device)
                mask = key_pos[None, :] <= query_pos[:, None]  # (T, start+T)
            y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask, dropout_p=dropout_p)
        else:
            # Rows at different lengths: scatter each row's new entries at its own positions;
            # the advanced indices (B, 1) and (B, T) put (B, T) first: (B, T, nh, hs).
            cache.k[layer][step.rows, :, step.positions] = k.transpose(1, 2).to(cache.k.dtype)
            cache.v[layer][step.rows, :, step.positions] = v.transpose(1, 2).to(cache.v.dtype)
            k_all = cache.k[layer, :, :, : step.key_len].to(q.dtype)  # (B, nh, key_len, hs)
            v_all = cache.v[layer, :, :, : step.key_len].to(q.dtype)
            y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=step.mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.out(y))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hidden = config.mlp_ratio * config.d_model
        self.fc1 = nn.Linear(config.d_model, hidden)
        self.fc2 = nn.Linear(hidden, config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(F.gelu(self.fc1(x))))


class Block(nn.Module):
    """Pre-LayerNorm block, residual after attention and after the MLP."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.d_model)
        self.attn = CausalSelfAttention(config)
        self.ln2 = nn.LayerNorm(config.d_model)
        self.mlp = MLP(config)

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, step: _CacheStep | None = None
    ) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache, layer, step)
        x = x + self.mlp(self.ln2(x))
        return x


class MatraTransformer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.gauss_emb = GaussianEmbedding(config)
        self.register_buffer("pos_enc", sinusoidal_encoding(config.max_len, config.d_model), persistent=False)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.d_model)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size)
        self.kind_emb = nn.Embedding(N_KINDS, config.d_model) if config.slot_kinds else None
        self.mixture = ValueMixture(config) if config.value_head == "mixture" else None
        self.cont_head = nn.Linear(config.d_model, 1 if self.mixture is None else self.mixture.n_params)
        self.apply(self._init_weights)
        if self.mixture is not None:
            with torch.no_grad():
                self.cont_head.bias.copy_(self.mixture.initial_bias())
        # Scaled init of the projections that feed the residual stream (GPT-2), so the stream's
        # variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("attn.out.weight") or name.endswith("mlp.fc2.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            # Unit scale, like the sinusoidal positions and the Gaussian value bumps it is summed
            # with: at GPT-2's 0.02 the token identity starts 50x below the position signal.
            nn.init.normal_(module.weight, mean=0.0, std=1.0)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def new_kv_cache(
        self, batch_size: int, max_len: int, device: torch.device | str, dtype: torch.dtype
    ) -> KVCache:
        if max_len > self.config.max_len:
            raise UsageError(f"KV cache of {max_len} positions exceeds the model's max_len {self.config.max_len}")
        c = self.config
        shape = (c.n_layer, batch_size, c.n_head, max_len, c.d_model // c.n_head)
        return KVCache(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))

    def embed(
        self,
        tokens: torch.Tensor,
        values: torch.Tensor,
        start: int = 0,
        positions: torch.Tensor | None = None,
        kinds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token or value embedding plus the position's encoding: positions ``start..start+T-1``,
        or per row, ``positions`` (B, T); plus the next slot's kind embedding (``slot_kinds``)."""
        T = tokens.shape[1]
        is_num = tokens == self.config.num_id  # (B, T)
        x_tok = self.tok_emb(tokens)  # (B, T, C)
        # NaN never reaches the Gaussians: torch.where would still backpropagate NaN * 0.
        v = torch.where(is_num, torch.nan_to_num(values.float(), nan=0.0), torch.zeros_like(values, dtype=torch.float32))
        x_num = self.gauss_emb(v).to(x_tok.dtype)  # (B, T, C)
        x = torch.where(is_num[..., None], x_num, x_tok)
        pos_enc = self.pos_enc[start : start + T] if positions is None else self.pos_enc[positions]
        x = x + pos_enc.to(x.dtype)
        if self.kind_emb is not None:
            x = x + self.kind_emb(kinds.to(device=tokens.device, dtype=torch.long)).to(x.dtype)
        return self.drop(x)  # (B, T, C)

    def forward(
        self,
        tokens: torch.Tensor,
        values: torch.Tensor,
        kv_cache: KVCache | None = None,
        kinds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits[B, T, V], cont[B, T])`` for the regression head, ``cont[B, T, P]`` (the
        mixture's parameters, see ``ValueMixture``) for the mixture head.

        ``kinds`` (B, T): the kind of the slot that *follows* each input position
        (``model/slots.py``); only read when ``config.slot_kinds``. When None it is derived from
        the tokens, which is exact only if the last position is not followed by a value (true of
        training batches, whose last target is ``<end>`` or padding); the sampler passes it.
        """
        B, T = tokens.shape
        if self.kind_emb is not None and kinds is None:
            if kv_cache is not None:
                raise UsageError("slot_kinds models need the kinds of the next slots when decoding with a cache")
            kinds = input_slot_kinds(tokens)
        step = None
        if kv_cache is None:
            end = T
        else:
            if kv_cache.batch_size != B:
                raise UsageError(f"KV cache has {kv_cache.batch_size} rows, the input {B}")
            end = int(kv_cache.lengths.max()) + T if B else T
        if end > self.config.max_len:
            raise UsageError(f"{end} positions exceed the model's max_len {self.config.max_len}")
        if kv_cache is not None and end > kv_cache.max_len:
            raise UsageError(f"{end} positions exceed the KV cache length {kv_cache.max_len}")
        if kv_cache is not None:
            step = self._cache_step(kv_cache, T, end, tokens.device)
        positions = step.positions if step is not None else None
        x = self.embed(tokens, values, step.start if step is not None and step.start is not None else 0, positions,
                       kinds)
        for layer, block in enumerate(self.blocks):
            x = block(x, kv_cache, layer, step)
        x = self.ln_f(x)
        logits = self.lm_head(x)  # (B, T, V)
        if self.mixture is not None:
            cont_pred = self.cont_head(x).float()  # (B, T, P): float32 even under autocast
        else:
            cont_pred = self.cont_head(x).squeeze(-1)  # (B, T)
            if self.config.cont_loss_scale == "log":
                cont_pred = symexp(cont_pred)
        if kv_cache is not None:
            kv_cache.lengths += T
        return logits, cont_pred

    @staticmethod
    def _cache_step(cache: KVCache, T: int, key_len: int, device: torch.device) -> _CacheStep:
        if cache.uniform():
            return _CacheStep(start=int(cache.lengths[0]) if cache.batch_size else 0)
        lengths = cache.lengths.to(device)
        offsets = torch.arange(T, device=device)
        positions = lengths[:, None] + offsets[None, :]  # (B, T)
        rows = torch.arange(cache.batch_size, device=device)[:, None]  # (B, 1)
        # Query at position p of row b sees that row's keys 0..p, never a stale entry past it.
        mask = torch.arange(key_len, device=device)[None, None, :] <= positions[:, :, None]  # (B, T, key_len)
        return _CacheStep(start=None, rows=rows, positions=positions, key_len=key_len, mask=mask[:, None])


@dataclass
class LossParts:
    """Sums over the batch, so that shards of one global batch add up exactly."""

    ce_sum: torch.Tensor
    n_tokens: int
    mse_sum: torch.Tensor
    """Weighted sum of the value loss (squared error of the regression head, negative
    log-likelihood of the mixture head) over the ``<num>`` targets."""
    n_values: int
    kind_sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    """Unweighted value loss summed per kind (coordinate, length, angle), for the metrics."""
    kind_counts: list[int] = field(default_factory=lambda: [0, 0, 0])


def symlog(v: torch.Tensor) -> torch.Tensor:
    """sign(v) * log1p(|v|): the space the continuous head learns in (``cont_loss_scale: log``)."""
    return torch.sign(v) * torch.log1p(v.abs())


def symexp(h: torch.Tensor) -> torch.Tensor:
    """Inverse of ``symlog``; |h| is capped so a wild early prediction cannot overflow."""
    return torch.sign(h) * torch.expm1(h.abs().clamp(max=12.0))


def input_slot_kinds(tokens: torch.Tensor) -> torch.Tensor:
    """Next-slot kinds of model inputs ``<bos> + seq[:-1]`` (B, T): the kinds of ``seq[0..T-2]``,
    then NONE for the last position (whose target is not a value in a training batch)."""
    targets = tokens[:, 1:].detach().cpu().numpy()
    kinds = np.zeros(tuple(tokens.shape), dtype=np.int64)
    kinds[:, :-1] = sequence_slot_kinds(targets)
    return torch.from_numpy(kinds).to(tokens.device)


def target_slot_kinds(target_tokens: torch.Tensor) -> torch.Tensor:
    """Kinds of the targets (B, T): the model input ``kinds`` of a training batch."""
    kinds = sequence_slot_kinds(target_tokens.detach().cpu().numpy()).astype(np.int64)
    return torch.from_numpy(kinds).to(target_tokens.device)


class ValueMixture:
    """The mixture head: per kind, ``n_mix`` weighted components in a normalised space.

    Parameters per position: for each kind (coordinate, length, angle) ``n_mix`` logits, then
    ``n_mix`` locations, then ``n_mix`` log-scales (``n_params = 9 * n_mix``); the slot's kind
    selects its block. Spaces: a coordinate x is the angle 2 pi x, each component a von Mises
    of mean 2 pi loc and concentration exp(log-scale): periodic, so 0.98 and 0.02 are close and
    several candidate positions stay apart instead of being averaged. A length a is
    z = (ln a - length_log_loc) / length_log_scale and an angle z = (deg - angle_loc) /
    angle_scale, each component a Gaussian of mean loc and standard deviation exp(log-scale).

    Sampling at temperature T tempers every part alike: component weights ``w^(1/T)``,
    von Mises concentration ``kappa / T``, Gaussian deviation ``sigma * sqrt(T)`` (each the
    component density raised to 1/T). The point value (metrics) is the location of the component
    with the highest peak density.
    """

    LOG_KAPPA = (-3.0, 10.0)
    LOG_SIGMA = (-7.0, 3.0)
    LOG_KAPPA_REPEL = (2.0, 8.0)
    BIN_REACH = 0.75  # coord_bins: a component moves up to 3/4 of its stretch either way
    GRID = 256  # points over the period that normalise a repelled coordinate density
    SAMPLE_GRID = 2048

    def __init__(self, config: ModelConfig) -> None:
        self.k = config.n_mix
        self.repulsion = config.coord_repulsion
        self.coord_bins = config.coord_bins
        # 9K mixture parameters, then (repulsion) the strength and the log kernel concentration
        self.n_params = 9 * self.k + (2 if self.repulsion else 0)
        self.length_loc, self.length_scale = config.length_log_loc, config.length_log_scale
        self.per_atom = config.length_per_atom
        self.angle_loc, self.angle_scale = config.angle_loc, config.angle_scale

    def initial_bias(self) -> torch.Tensor:
        """Components spread over each kind's range at the start, so they do not all chase the
        same mode: coordinates at k / n_mix with kappa 8, lengths and angles over -1.5..1.5."""
        k = self.k
        bias = torch.zeros(3, 3, k)
        bias[0, 1] = 0.0 if self.coord_bins else torch.arange(k) / k  # bins: u = 0 is the centre (k + 1/2) / K
        bias[0, 2] = math.log(8.0)
        spread = torch.linspace(-1.5, 1.5, k) if k > 1 else torch.zeros(1)
        bias[1:, 1] = spread
        bias[1:, 2] = math.log(0.5)
        extra = torch.tensor([2.0, math.log(300.0)]) if self.repulsion else torch.zeros(0)
        return torch.cat([bias.reshape(-1), extra])

    def select(self, params: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
        """(..., 9K) parameters and (...) kinds -> (..., 3, K): the block of each slot's kind."""
        blocks = params[..., : 9 * self.k].reshape(*params.shape[:-1], 3, 3, self.k)
        index = (kinds.long() - 1).clamp(min=0, max=2)
        index = index[..., None, None, None].expand(*kinds.shape, 1, 3, self.k)
        block = blocks.gather(-3, index).squeeze(-3)
        if not self.coord_bins:
            return block
        centres = torch.arange(self.k, device=params.device, dtype=block.dtype) + 0.5
        binned = (centres + self.BIN_REACH * torch.tanh(block[..., 1, :])) / self.k
        loc = torch.where((kinds == COORD)[..., None], binned, block[..., 1, :])
        return torch.stack([block[..., 0, :], loc, block[..., 2, :]], dim=-2)

    def length_offset(self, atoms):
        """ln(N) / 3 (``length_per_atom``) else 0, for N atoms in the cell (tensor, array or int)."""
        if not self.per_atom or atoms is None:
            return 0.0
        if isinstance(atoms, torch.Tensor):
            return torch.log(atoms.float().clamp(min=1.0)) / 3.0
        return np.log(np.maximum(atoms, 1)) / 3.0

    def normalise(self, values: torch.Tensor, kinds: torch.Tensor, atoms: torch.Tensor | None = None) -> torch.Tensor:
        """Values in the head's space: coordinates as they are, lengths and angles as z."""
        safe_len = torch.where(kinds == LENGTH, values, torch.ones_like(values)).clamp(min=1e-6)
        z_len = (torch.log(safe_len) - self.length_offset(atoms) - self.length_loc) / self.length_scale
        z_ang = (values - self.angle_loc) / self.angle_scale
        return torch.where(kinds == LENGTH, z_len, torch.where(kinds == ANGLE, z_ang, values))

    def _coord_log_density(self, block: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log mixture density of coordinates: block (..., 3, K), x (..., G) -> (..., G)."""
        log_w = torch.log_softmax(block[..., 0, :], dim=-1)[..., None, :]
        loc = block[..., 1, :][..., None, :]
        kappa = block[..., 2, :].clamp(*self.LOG_KAPPA).exp()[..., None, :]
        lp = kappa * (torch.cos(2 * math.pi * (x[..., None] - loc)) - 1.0) - torch.log(torch.special.i0e(kappa))
        return torch.logsumexp(log_w + lp, dim=-1)

    def _repel(self, params: torch.Tensor, x: torch.Tensor, reps: torch.Tensor, weights: torch.Tensor):
        """lambda * sum_j w_j exp(kappa_r (cos 2 pi (x - r_j) - 1)): params (N, P), x (N, G),
        reps and weights (N, R) -> (N, G)."""
        strength = F.softplus(params[:, -2])[:, None, None]
        kappa = params[:, -1].clamp(*self.LOG_KAPPA_REPEL).exp()[:, None, None]
        kern = torch.exp(kappa * (torch.cos(2 * math.pi * (x[..., None] - reps[:, None, :])) - 1.0))
        return (strength * weights[:, None, :] * kern).sum(-1)

    def repelled_nll(self, params: torch.Tensor, values: torch.Tensor, reps: torch.Tensor,
                     weights: torch.Tensor) -> torch.Tensor:
        """NLL of coordinates (N,) under the repelled density: params (N, P), reps/weights (N, R)."""
        block = self.select(params.float(), torch.full(values.shape, COORD, device=values.device))
        grid = (torch.arange(self.GRID, device=values.device, dtype=torch.float32) + 0.5) / self.GRID
        grid = grid.expand(len(values), -1)
        log_on_grid = self._coord_log_density(block, grid) - self._repel(params.float(), grid, reps, weights)
        log_z = torch.logsumexp(log_on_grid, dim=-1) - math.log(self.GRID)  # the mean over the period
        at = values.float()[:, None]
        log_at = self._coord_log_density(block, at)[:, 0] - self._repel(params.float(), at, reps, weights)[:, 0]
        return log_z - log_at

    def nll(
        self,
        params: torch.Tensor,
        values: torch.Tensor,
        kinds: torch.Tensor,
        atoms: torch.Tensor | None = None,
        reps: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Negative log-likelihood of each value (0 where the kind is NONE), float32.

        Coordinates: log density over x in [0, 1) is kappa (cos(2 pi (x - loc)) - 1) -
        ln(i0e(kappa)), with i0e the exponentially scaled Bessel function (no overflow).
        Lengths and angles: Gaussian log density in z.
        """
        block = self.select(params.float(), kinds)
        log_w = torch.log_softmax(block[..., 0, :], dim=-1)
        loc, log_scale = block[..., 1, :], block[..., 2, :]
        v = torch.nan_to_num(values.float(), nan=0.0)
        z = self.normalise(v, kinds, atoms)[..., None]
        log_kappa = log_scale.clamp(*self.LOG_KAPPA)
        kappa = log_kappa.exp()
        lp_coord = kappa * (torch.cos(2 * math.pi * (z - loc)) - 1.0) - torch.log(torch.special.i0e(kappa))
        log_sigma = log_scale.clamp(*self.LOG_SIGMA)
        lp_gauss = -0.5 * ((z - loc) * torch.exp(-log_sigma)) ** 2 - log_sigma - 0.5 * math.log(2 * math.pi)
        lp = torch.where((kinds == COORD)[..., None], lp_coord, lp_gauss)
        nll = -torch.logsumexp(log_w + lp, dim=-1)
        if self.repulsion and reps is not None:
            # the last free values of sites that share a Wyckoff token with an earlier site
            repelled = (kinds == COORD) & (weights > 0).any(dim=-1)
            if bool(repelled.any()):
                nll = nll.clone()
                nll[repelled] = self.repelled_nll(params[repelled], v[repelled], reps[repelled].float(),
                                                  weights[repelled].float())
        return torch.where(kinds > NONE, nll, torch.zeros_like(nll))

    def point(self, params: torch.Tensor, kinds: torch.Tensor, atoms: torch.Tensor | None = None) -> torch.Tensor:
        """The location of the component with the highest peak density (weight over width: the
        mixture's approximate mode), in the values' units (NaN where NONE)."""
        block = self.select(params.float(), kinds)
        log_w = torch.log_softmax(block[..., 0, :], dim=-1)
        kappa = block[..., 2, :].clamp(*self.LOG_KAPPA).exp()
        peak_coord = log_w - torch.log(torch.special.i0e(kappa))  # von Mises peak: exp(kappa) / I0(kappa)
        peak_gauss = log_w - block[..., 2, :].clamp(*self.LOG_SIGMA)  # Gaussian peak: 1 / sigma
        peak = torch.where((kinds == COORD)[..., None], peak_coord, peak_gauss)
        top = peak.argmax(dim=-1, keepdim=True)
        loc = block[..., 1, :].gather(-1, top).squeeze(-1)
        out = torch.where(kinds == COORD, torch.remainder(loc, 1.0),
                          torch.where(kinds == LENGTH,
                                      torch.exp(loc * self.length_scale + self.length_loc + self.length_offset(atoms)),
                                      loc * self.angle_scale + self.angle_loc))
        return torch.where(kinds > NONE, out, torch.full_like(out, math.nan))

    def sample(
        self,
        params: np.ndarray,
        kind: int,
        temperature: float,
        rng: np.random.Generator,
        atoms: int = 1,
        repel: tuple[list[float], list[float]] | None = None,
    ) -> float:
        """One value of ``kind`` from a position's parameters (P,) at ``temperature`` (``atoms``:
        in the cell, for lengths): one uniform picks the component, then one von Mises or normal
        draw, all from ``rng``. A coordinate with ``repel`` (values, weights) is drawn from the
        tempered mixture times the repulsion factor raised to 1/T (``_accept_first``)."""
        return float(self.sample_many(np.asarray(params, dtype=np.float64)[None], np.array([kind]), temperature, [rng],
                                      np.array([atoms]), [repel])[0])

    def _tempered_kappa(self, log_kappa: np.ndarray, temperature: float) -> np.ndarray:
        """Von Mises concentrations at temperature T: exp(log-scale), clamped, over T."""
        # np.minimum(np.maximum()) rather than np.clip: a few microseconds less per call, every step
        return np.exp(np.minimum(np.maximum(log_kappa, self.LOG_KAPPA[0]), self.LOG_KAPPA[1])) / temperature

    # Proposals of the tempered mixture tried before the grid takes over (the acceptance is the
    # repulsion factor: near 1 unless the mixture sits on a repelled value), after the first one
    # in blocks of REPEL_BLOCK drawn at once.
    REPEL_TRIALS = 32
    REPEL_BLOCK = 32

    def sample_many(
        self,
        params: np.ndarray,
        kinds: np.ndarray,
        temperature: float,
        rngs: list[np.random.Generator],
        atoms: np.ndarray,
        repels: list[tuple[list[float], list[float]] | None],
    ) -> np.ndarray:
        """``sample`` for many rows at once (params (n, P), kinds, atoms and repels per row), each
        row from its own generator only, so a row's value does not depend on the other rows. The
        array work (tempering, picking the component, mapping back to the values' units) is done
        once for all rows; only the draws themselves stay per row. A repelled coordinate whose
        first proposal is refused goes on in ``_accept_first``."""
        n, k = len(kinds), self.k
        if n == 0:
            return np.zeros(0)
        kinds = np.asarray(kinds, dtype=np.int64)
        rows = np.arange(n)
        p = np.asarray(params, dtype=np.float64)
        blocks = p[:, : 9 * k].reshape(n, 3, 3, k)[rows, kinds - 1]  # (n, 3, K): each row's kind
        coord = kinds == COORD
        if self.coord_bins and coord.any():
            blocks[coord, 1] = (np.arange(k) + 0.5 + self.BIN_REACH * np.tanh(blocks[coord, 1])) / k
        logits = blocks[:, 0] / temperature
        cdf = np.cumsum(np.exp(logits - logits.max(axis=1, keepdims=True)), axis=1)
        u = np.array([rng.random() for rng in rngs])
        # searchsorted(cdf, u * total, side="right") per row
        comp = np.minimum((cdf <= (u * cdf[:, -1])[:, None]).sum(axis=1), k - 1)
        loc, log_scale = blocks[rows, 1, comp], blocks[rows, 2, comp]
        kappa = self._tempered_kappa(log_scale, temperature)
        sigma = np.exp(np.minimum(np.maximum(log_scale, self.LOG_SIGMA[0]), self.LOG_SIGMA[1])) * math.sqrt(temperature)
        mu = 2 * math.pi * loc
        draws = np.array([rngs[i].vonmises(mu[i], kappa[i]) if coord[i] else rngs[i].standard_normal()
                          for i in range(n)])
        z = loc + sigma * draws
        length = np.exp(np.minimum(z * self.length_scale + self.length_loc + self.length_offset(np.asarray(atoms)),
                                   700.0))
        out = np.where(coord, np.mod(draws / (2 * math.pi), 1.0), np.where(kinds == LENGTH, length,
                                                                          z * self.angle_scale + self.angle_loc))
        if self.repulsion:
            rows = [i for i in np.flatnonzero(coord) if repels[i] and len(repels[i][0])]
            if rows:
                self._accept_first(out, np.array(rows), p, blocks, cdf, temperature, rngs, repels)
        return out

    def _accept_first(self, out: np.ndarray, rows: np.ndarray, p: np.ndarray, blocks: np.ndarray, cdf: np.ndarray,
                      temperature: float, rngs: list[np.random.Generator], repels: list) -> None:
        """The repelled coordinates ``rows`` of ``sample_many``: each first proposal (in ``out``)
        is kept with probability r(x)^(1/T), one uniform per row; a refused row goes on with
        blocks of ``REPEL_BLOCK`` more proposals, then the grid (``_sample_on_grid``). The
        arithmetic of all rows is done at once; each row draws from its own generator, in the
        same order as alone."""
        sizes = [len(repels[i][0]) for i in rows]
        reps, weights = np.zeros((len(rows), max(sizes))), np.zeros((len(rows), max(sizes)))  # padding weighs 0
        for j, i in enumerate(rows):
            reps[j, : sizes[j]], weights[j, : sizes[j]] = repels[i][0], repels[i][1]
        strength = np.logaddexp(0.0, p[rows, -2]) / temperature
        kr = np.exp(np.minimum(np.maximum(p[rows, -1], self.LOG_KAPPA_REPEL[0]), self.LOG_KAPPA_REPEL[1]))
        kern = np.exp(kr[:, None] * (np.cos(2 * np.pi * (out[rows][:, None] - reps)) - 1.0))
        keep = np.exp(-strength * (weights * kern).sum(axis=1))
        if self.REPEL_TRIALS < 1:
            refused = list(range(len(rows)))
        else:
            refused = [j for j, i in enumerate(rows) if rngs[i].random() >= keep[j]]
        left = max(self.REPEL_TRIALS - 1, 0)
        while refused and left > 0:
            m = min(self.REPEL_BLOCK, left)
            left -= m
            at = rows[refused]
            # per refused row: m component uniforms, m von Mises draws, m acceptance uniforms
            targets = np.stack([rngs[i].random(m) for i in at]) * cdf[at, -1:]
            comp = np.minimum((cdf[at][:, None, :] <= targets[:, :, None]).sum(axis=2), self.k - 1)  # (r, m)
            picked = np.take_along_axis(blocks[at], comp[:, None, :], axis=2)  # (r, 3, m)
            kappa = self._tempered_kappa(picked[:, 2], temperature)
            mu = 2 * np.pi * picked[:, 1]
            angle = np.stack([rngs[i].vonmises(mu[a], kappa[a]) for a, i in enumerate(at)])  # (r, m)
            kern = np.exp(kr[refused, None, None] * (np.cos(angle[:, :, None] - 2 * np.pi * reps[refused, None, :]) - 1.0))
            penalty = strength[refused, None] * (kern * weights[refused, None, :]).sum(axis=2)
            accepted = np.stack([rngs[i].random(m) for i in at]) < np.exp(-penalty)
            done = accepted.any(axis=1)
            first = np.mod(angle[np.arange(len(at)), accepted.argmax(axis=1)] / (2 * np.pi), 1.0)
            out[at[done]] = first[done]  # each row's first accepted proposal
            refused = [j for j, ok in zip(refused, done.tolist(), strict=True) if not ok]
        for j in refused:
            i = rows[j]
            out[i] = self._sample_on_grid(blocks[i], cdf[i], temperature, rngs[i], reps[j, : sizes[j]],
                                          weights[j, : sizes[j]], float(strength[j]), float(kr[j]))

    def _sample_on_grid(self, block: np.ndarray, cdf: np.ndarray, temperature: float, rng: np.random.Generator,
                        reps: np.ndarray, weights: np.ndarray, strength: float, kr: float) -> float:
        """A coordinate from m_T(x) * r(x)^(1/T) on a 2048-point grid: m_T the tempered mixture (as
        for any coordinate), r(x) = exp(-lambda sum_j w_j exp(kappa_r (cos 2 pi (x - r_j) - 1)))
        <= 1 the repulsion (``strength`` is lambda / T). At T = 1 this is the density the model is
        trained on. What a repelled row ends on when ``REPEL_TRIALS`` proposals of m_T were all
        refused (the mixture sits on a repelled value); exact rejection sampling draws the same
        density, a test checks the two agree. ``block`` (3, K) and ``cdf`` (its cumulative
        tempered component weights, unnormalised) as ``sample_many`` has them."""
        kappa = self._tempered_kappa(block[2], temperature)
        mu, rep_angles = 2 * np.pi * block[1], 2 * np.pi * reps
        weight = cdf.copy()
        weight[1:] -= cdf[:-1]  # tempered component weights, unnormalised
        with np.errstate(divide="ignore"):  # a weight of exactly 0 is log 0 = -inf: that component is absent
            peak = np.log(weight / cdf[-1]) - np.log(_i0e(kappa))  # each component's log density at its location
        # Every term is c exp(kappa (cos 2 pi (g - mu) - 1)), the K components then the R repelled
        # values; cos 2 pi (g - mu) = cos 2 pi g cos 2 pi mu + sin 2 pi g sin 2 pi mu, so all the
        # exponents are one (K + R, 2) x (2, G) product and one exp, a row per term.
        angles = np.concatenate([mu, rep_angles])
        concentration = np.concatenate([kappa, np.full(len(reps), kr)])
        exponent = (concentration[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)) @ _sample_grid(
            self.SAMPLE_GRID)
        exponent += (np.concatenate([peak - peak.max(), np.zeros(len(reps))]) - concentration)[:, None]
        terms = np.exp(exponent)
        with np.errstate(divide="ignore"):  # far from every sharp component the sum underflows to 0
            log_d = np.log(terms[: self.k].sum(axis=0)) - strength * (weights @ terms[self.k :])
        cdf_grid = np.cumsum(np.exp(log_d - log_d.max()))
        cell = min(int(np.searchsorted(cdf_grid, rng.random() * cdf_grid[-1], side="right")), self.SAMPLE_GRID - 1)
        return float((cell + rng.random()) / self.SAMPLE_GRID) % 1.0


@functools.cache
def _sample_grid(n: int) -> np.ndarray:
    """(2, n): cos and sin of 2 pi g at the centres g of n cells over the period (read-only)."""
    angle = 2 * np.pi * (np.arange(n) + 0.5) / n
    grid = np.stack([np.cos(angle), np.sin(angle)])
    grid.flags.writeable = False
    return grid


def _i0e(kappa: np.ndarray) -> np.ndarray:
    return torch.special.i0e(torch.from_numpy(np.asarray(kappa, dtype=np.float64))).numpy()


def point_values(
    model: MatraTransformer, cont: torch.Tensor, kinds: torch.Tensor, atoms: torch.Tensor
) -> torch.Tensor:
    """The model's single value per slot (B, T), in the values' units: the regression output,
    or the mixture's approximate mode (``ValueMixture.point``). ``atoms`` (B,): atoms in each row's cell."""
    if model.mixture is None:
        return cont.float()
    return model.mixture.point(cont, kinds.to(cont.device), atoms.to(cont.device)[:, None].expand(kinds.shape))


def target_cell_atoms(target_tokens: torch.Tensor) -> torch.Tensor:
    """Atoms in each row's conventional cell (B,), from the composition block of the targets."""
    atoms = sequence_cell_atoms(target_tokens.detach().cpu().numpy())
    return torch.from_numpy(np.asarray(atoms, dtype=np.int64)).to(target_tokens.device)


def loss_sums(
    logits: torch.Tensor,
    cont_pred: torch.Tensor,
    target_tokens: torch.Tensor,
    target_values: torch.Tensor,
    config: ModelConfig,
    kinds: torch.Tensor | None = None,
    atoms: torch.Tensor | None = None,
) -> LossParts:
    """Summed CE over non-pad targets and summed value loss where the target is ``<num>``.

    ``target_tokens``/``target_values`` are the inputs shifted left by one (B, T); ``kinds``
    the targets' slot kinds and ``atoms`` (B,) the atoms in each row's cell (both derived from
    ``target_tokens`` when None). The caller divides by
    the global counts, which keeps a batch split over ranks or micro-batches exactly equal to
    the whole batch. The value loss of a ``<num>`` target is weighted by its kind's
    ``value_loss_weights``.
    """
    valid = target_tokens != config.pad_id  # (B, T)
    ce = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), target_tokens.reshape(-1), reduction="none"
    ).view_as(target_tokens)
    ce_sum = (ce * valid).sum()
    is_num = target_tokens == config.num_id
    if kinds is None:
        kinds = target_slot_kinds(target_tokens)
    kinds = torch.where(is_num, kinds.to(target_tokens.device).long(), 0)
    target = torch.nan_to_num(target_values.float(), nan=0.0)
    if config.value_head == "mixture":
        # only the <num> targets: a third of the positions, and no NaN from the others
        if atoms is None:
            atoms = target_cell_atoms(target_tokens)
        row_atoms = atoms.to(target.device)[:, None].expand(target.shape)
        reps = weights = None
        if config.coord_repulsion:
            r, w = sequence_repulsion(target_tokens.detach().cpu().numpy(), target_values.detach().cpu().numpy())
            reps = torch.from_numpy(r).to(target.device)[is_num]
            weights = torch.from_numpy(w).to(target.device)[is_num]
        per_value = torch.zeros_like(target)
        per_value[is_num] = ValueMixture(config).nll(cont_pred[is_num], target[is_num], kinds[is_num],
                                                     row_atoms[is_num], reps, weights)
    else:
        if config.cont_loss_scale == "log":
            err = torch.where(is_num, symlog(cont_pred.float()) - symlog(target), 0.0)
        else:
            err = torch.where(is_num, cont_pred.float() - target, 0.0)
        if config.cont_loss_scale == "relative":
            err = err / target.abs().clamp(min=1.0)
        per_value = err**2
    # a <num> the layout cannot place (no space group before it) keeps weight 1: the regression
    # head needs no kind; the mixture head gives it no loss
    weights = torch.tensor((1.0, *config.value_loss_weights), device=per_value.device)[kinds]
    weights = torch.where(is_num, weights, 0.0)
    mse_sum = (per_value * weights).sum()
    detached = per_value.detach()
    kind_sums = [float(detached[kinds == k].sum()) for k in VALUE_KINDS]
    kind_counts = [int((kinds == k).sum()) for k in VALUE_KINDS]
    return LossParts(ce_sum, int(valid.sum()), mse_sum, int(is_num.sum()), kind_sums, kind_counts)


def combine_loss(parts: LossParts, n_tokens: int, n_values: int, config: ModelConfig) -> torch.Tensor:
    """CE per token + w * value loss per value, normalised by the (global) counts given."""
    return parts.ce_sum / max(n_tokens, 1) + config.cont_loss_weight * parts.mse_sum / max(n_values, 1)
