"""The Matra-Genoa transformer: one decoder-only model over the hybrid token sequence.

Paper sections II.2 and IV.2. The input of the model is ``<bos>`` followed by the tokens of a
``TokenSequence``; ``values`` runs parallel to ``tokens`` and holds the continuous value of every
``<num>`` token (NaN elsewhere). At every position the model predicts the next token (logits over
the vocabulary, trained with cross-entropy) and, for positions whose next token is ``<num>``, the
next continuous value (``cont_pred``, in the values' own units, trained with MSE; by default in
symlog space, sign(v) * log1p(|v|), see ``cont_loss_scale``).
``loss = CE + cont_loss_weight * MSE``.

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

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from matra_hpc.errors import UsageError

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
    pad_id: int = PAD_ID
    bos_id: int = BOS_ID
    num_id: int = NUM_ID

    def __post_init__(self) -> None:
        # JSON and YAML give lists; keep tuples so configs compare equal after a round trip.
        self.gauss_lin_range = tuple(float(x) for x in self.gauss_lin_range)
        self.gauss_log_range = tuple(float(x) for x in self.gauss_log_range)
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
        self.cont_head = nn.Linear(config.d_model, 1)
        self.apply(self._init_weights)
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
        self, tokens: torch.Tensor, values: torch.Tensor, start: int = 0, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Token or value embedding plus the position's encoding: positions ``start..start+T-1``,
        or per row, ``positions`` (B, T)."""
        T = tokens.shape[1]
        is_num = tokens == self.config.num_id  # (B, T)
        x_tok = self.tok_emb(tokens)  # (B, T, C)
        # NaN never reaches the Gaussians: torch.where would still backpropagate NaN * 0.
        v = torch.where(is_num, torch.nan_to_num(values.float(), nan=0.0), torch.zeros_like(values, dtype=torch.float32))
        x_num = self.gauss_emb(v).to(x_tok.dtype)  # (B, T, C)
        x = torch.where(is_num[..., None], x_num, x_tok)
        pos_enc = self.pos_enc[start : start + T] if positions is None else self.pos_enc[positions]
        return self.drop(x + pos_enc.to(x.dtype))  # (B, T, C)

    def forward(
        self, tokens: torch.Tensor, values: torch.Tensor, kv_cache: KVCache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        B, T = tokens.shape
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
        x = self.embed(tokens, values, step.start if step is not None and step.start is not None else 0, positions)
        for layer, block in enumerate(self.blocks):
            x = block(x, kv_cache, layer, step)
        x = self.ln_f(x)
        logits = self.lm_head(x)  # (B, T, V)
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
    n_values: int


def symlog(v: torch.Tensor) -> torch.Tensor:
    """sign(v) * log1p(|v|): the space the continuous head learns in (``cont_loss_scale: log``)."""
    return torch.sign(v) * torch.log1p(v.abs())


def symexp(h: torch.Tensor) -> torch.Tensor:
    """Inverse of ``symlog``; |h| is capped so a wild early prediction cannot overflow."""
    return torch.sign(h) * torch.expm1(h.abs().clamp(max=12.0))


def loss_sums(
    logits: torch.Tensor,
    cont_pred: torch.Tensor,
    target_tokens: torch.Tensor,
    target_values: torch.Tensor,
    config: ModelConfig,
) -> LossParts:
    """Summed CE over non-pad targets and summed squared error where the target is ``<num>``.

    ``target_tokens``/``target_values`` are the inputs shifted left by one (B, T); the caller
    divides by the global counts, which keeps a batch split over ranks or micro-batches exactly
    equal to the whole batch.
    """
    valid = target_tokens != config.pad_id  # (B, T)
    ce = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), target_tokens.reshape(-1), reduction="none"
    ).view_as(target_tokens)
    ce_sum = (ce * valid).sum()
    is_num = target_tokens == config.num_id
    target = torch.nan_to_num(target_values.float(), nan=0.0)
    if config.cont_loss_scale == "log":
        err = torch.where(is_num, symlog(cont_pred.float()) - symlog(target), 0.0)
    else:
        err = torch.where(is_num, cont_pred.float() - target, 0.0)
    if config.cont_loss_scale == "relative":
        err = err / target.abs().clamp(min=1.0)
    mse_sum = (err**2).sum()
    return LossParts(ce_sum, int(valid.sum()), mse_sum, int(is_num.sum()))


def combine_loss(parts: LossParts, n_tokens: int, n_values: int, config: ModelConfig) -> torch.Tensor:
    """CE per token + w * MSE per value, normalised by the (global) counts given."""
    return parts.ce_sum / max(n_tokens, 1) + config.cont_loss_weight * parts.mse_sum / max(n_values, 1)
