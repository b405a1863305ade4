"""The transformer: size of the paper config, KV-cache decoding, embeddings, loss, loading."""

from __future__ import annotations

import math

import pytest
import torch

from matra_hpc.errors import CheckpointError, UsageError
from matra_hpc.model import (
    MatraTransformer,
    ModelConfig,
    combine_loss,
    load_model,
    load_model_config,
    loss_sums,
)
from matra_hpc.model.checkpoint import CHECKPOINT_FORMAT, save_model_dir
from matra_hpc.model.transformer import GaussianEmbedding, sinusoidal_encoding
from matra_hpc.tokens import load_vocab

NUM = 3


def tiny(name: str = "tiny", **overrides) -> MatraTransformer:
    torch.manual_seed(0)
    cfg = load_model_config(name, load_vocab().size)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return MatraTransformer(cfg).eval()


def random_batch(
    B: int, T: int, vocab_size: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random tokens, values at the <num> tokens, and a random next-slot kind at each position."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, vocab_size, (B, T), generator=g)
    tokens[:, 0] = 1  # <bos>
    is_num = torch.rand(B, T, generator=g) < 0.3
    is_num[:, 0] = False
    tokens[is_num] = NUM
    values = torch.full((B, T), float("nan"))
    values[is_num] = torch.rand(int(is_num.sum()), generator=g) * 10
    kinds = torch.randint(0, 4, (B, T), generator=g)
    return tokens, values, kinds


def test_paper_config_has_41m_parameters_with_the_project_vocabulary():
    vocab = load_vocab()
    model = MatraTransformer(load_model_config("paper", vocab.size))
    cfg = model.config
    assert (cfg.n_layer, cfg.n_head, cfg.d_model) == (12, 16, 512)
    assert model.num_params() == pytest.approx(41e6, rel=0.05)


def test_kv_cache_step_by_step_equals_full_forward():
    model = tiny()
    tokens, values, kinds = random_batch(3, 24, model.config.vocab_size)
    with torch.no_grad():
        full_logits, full_cont = model(tokens, values, kinds=kinds)
        cache = model.new_kv_cache(3, 32, "cpu", torch.float32)
        logits, cont = [], []
        out = model(tokens[:, :7], values[:, :7], kv_cache=cache, kinds=kinds[:, :7])  # prefill at once
        logits.append(out[0])
        cont.append(out[1])
        for t in range(7, 24):
            out = model(tokens[:, t : t + 1], values[:, t : t + 1], kv_cache=cache, kinds=kinds[:, t : t + 1])
            logits.append(out[0])
            cont.append(out[1])
    assert cache.pos == 24
    torch.testing.assert_close(torch.cat(logits, 1), full_logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.cat(cont, 1), full_cont, atol=1e-5, rtol=1e-4)


def test_kv_cache_select_keeps_the_chosen_rows():
    model = tiny()
    tokens, values, kinds = random_batch(4, 12, model.config.vocab_size, seed=1)
    with torch.no_grad():
        full_logits, _ = model(tokens, values, kinds=kinds)
        cache = model.new_kv_cache(4, 12, "cpu", torch.float32)
        model(tokens[:, :6], values[:, :6], kv_cache=cache, kinds=kinds[:, :6])
        keep = torch.tensor([3, 1])
        cache.select(keep)
        assert cache.batch_size == 2 and cache.pos == 6
        rest = [model(tokens[keep, t : t + 1], values[keep, t : t + 1], kv_cache=cache,
                      kinds=kinds[keep, t : t + 1])[0] for t in range(6, 12)]
    torch.testing.assert_close(torch.cat(rest, 1), full_logits[keep, 6:], atol=1e-5, rtol=1e-4)


def test_rows_at_their_own_lengths_with_resets_equal_full_forwards():
    """Refilled rows: each row restarts at position 0 at its own step and must see only its own
    sequence (stale entries of the row's previous sequence masked out), with its own positions."""
    model = tiny()
    vocab_size = model.config.vocab_size
    # (row, step at which a sequence starts there, its length); rows restart mid-run
    plan = [(0, 0, 9), (0, 9, 6), (1, 0, 4), (1, 4, 11), (2, 2, 5), (2, 7, 8)]
    seqs = {(r, s): random_batch(1, n, vocab_size, seed=10 * r + s) for r, s, n in plan}
    cache = model.new_kv_cache(3, 16, "cpu", torch.float32)
    got: dict[tuple[int, int], list[torch.Tensor]] = {key: [] for key in seqs}
    with torch.no_grad():
        for step in range(16):
            tokens = torch.zeros(3, 1, dtype=torch.long)
            values = torch.full((3, 1), float("nan"))
            kinds = torch.zeros(3, 1, dtype=torch.long)
            where: dict[int, tuple[tuple[int, int], int]] = {}
            for r, s, n in plan:
                if s <= step < s + n:
                    where[r] = ((r, s), step - s)
            restart = [r for r, (key, t) in where.items() if t == 0]
            idle = [r for r in range(3) if r not in where]
            cache.reset(restart + idle)  # idle rows restart too, so they never run past the cache
            for r, (key, t) in where.items():
                tokens[r, 0] = seqs[key][0][0, t]
                values[r, 0] = seqs[key][1][0, t]
                kinds[r, 0] = seqs[key][2][0, t]
            if step == 2:
                assert not cache.uniform()
                with pytest.raises(UsageError):
                    _ = cache.pos
            logits, cont = model(tokens, values, kv_cache=cache, kinds=kinds)
            for r, (key, _t) in where.items():
                got[key].append(torch.cat([logits[r, 0], cont[r, 0].reshape(-1)]))
    for key, (tokens, values, kinds) in seqs.items():
        full_logits, full_cont = model(tokens, values, kinds=kinds)
        want = torch.cat([full_logits[0], full_cont[0].reshape(full_logits.shape[1], -1)], dim=1)
        torch.testing.assert_close(torch.stack(got[key]), want, atol=1e-5, rtol=1e-4)


def test_kv_cache_prefill_at_different_row_lengths():
    model = tiny()
    tokens, values, kinds = random_batch(2, 10, model.config.vocab_size, seed=3)
    with torch.no_grad():
        full_logits, _ = model(tokens, values, kinds=kinds)
        cache = model.new_kv_cache(2, 10, "cpu", torch.float32)
        model(tokens[:, :3], values[:, :3], kv_cache=cache, kinds=kinds[:, :3])
        # row 1 restarts the same sequence from 0: prefill 4 positions in both rows at once
        cache.reset([1])
        both = torch.stack([tokens[0, 3:7], tokens[1, 0:4]])
        both_values = torch.stack([values[0, 3:7], values[1, 0:4]])
        both_kinds = torch.stack([kinds[0, 3:7], kinds[1, 0:4]])
        logits, _ = model(both, both_values, kv_cache=cache, kinds=both_kinds)
    assert cache.lengths.tolist() == [7, 4]
    torch.testing.assert_close(logits[0], full_logits[0, 3:7], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits[1], full_logits[1, 0:4], atol=1e-5, rtol=1e-4)


def test_positions_beyond_the_cache_or_max_len_are_refused():
    model = tiny()
    tokens, values, kinds = random_batch(1, 5, model.config.vocab_size)
    cache = model.new_kv_cache(1, 4, "cpu", torch.float32)
    with pytest.raises(UsageError):
        model(tokens, values, kv_cache=cache, kinds=kinds)
    with pytest.raises(UsageError, match="kinds"):  # typed slots cannot be guessed while decoding
        model(tokens[:, :2], values[:, :2], kv_cache=model.new_kv_cache(1, 4, "cpu", torch.float32))
    with pytest.raises(UsageError):
        model.new_kv_cache(1, model.config.max_len + 1, "cpu", torch.float32)


def test_future_tokens_do_not_change_earlier_outputs():
    model = tiny()
    tokens, values, kinds = random_batch(2, 16, model.config.vocab_size)
    changed = tokens.clone()
    changed[:, 10:] = 7
    with torch.no_grad():
        a, ca = model(tokens, values, kinds=kinds)
        b, cb = model(changed, values, kinds=kinds)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    torch.testing.assert_close(ca[:, :10], cb[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_continuous_values_enter_only_at_num_tokens():
    model = tiny()
    tokens, values, kinds = random_batch(2, 16, model.config.vocab_size)
    shifted = values.clone()
    not_num = tokens != NUM
    shifted[not_num] = 123.0  # junk where there is no <num>: must be ignored
    with torch.no_grad():
        a, _ = model(tokens, values, kinds=kinds)
        b, _ = model(tokens, shifted, kinds=kinds)
        num_pos = torch.nonzero(tokens[0] == NUM)[0, 0]
        moved = values.clone()
        moved[0, num_pos] += 0.5
        c, _ = model(tokens, moved, kinds=kinds)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a[0, num_pos:], c[0, num_pos:])


def test_gaussian_embedding_has_a_linear_and_a_log_part():
    cfg = ModelConfig(vocab_size=100, n_layer=1, n_head=2, d_model=64, n_gauss=32)
    emb = GaussianEmbedding(cfg)
    x = emb(torch.tensor([[0.0, 0.25, 0.26, 5.0, 90.0]]))
    assert x.shape == (1, 5, 64) and torch.isfinite(x).all()
    lin, log = x[0, :, :32], x[0, :, 32:]
    # the linear part peaks where the centre is closest to the value
    assert int(lin[1].argmax()) == round(0.25 * 31)
    # the log part sees |log v|: 5 A and 90 degrees land on different centres, 0 far out
    assert int(log[3].argmax()) == round(math.log(5.0) / 6.0 * 31)
    assert int(log[4].argmax()) == round(math.log(90.0) / 6.0 * 31)
    assert not torch.allclose(x[0, 1], x[0, 2])
    assert ModelConfig(vocab_size=100, n_layer=1, n_head=2, d_model=64, n_gauss=16).n_gauss == 16
    projected = GaussianEmbedding(ModelConfig(vocab_size=100, n_layer=1, n_head=2, d_model=64, n_gauss=16))
    assert projected(torch.zeros(1, 2)).shape == (1, 2, 64)


def test_sinusoidal_encoding_matches_the_formula():
    enc = sinusoidal_encoding(50, 16)
    i, k = 7, 5
    assert enc[i, k].item() == pytest.approx(math.cos(i / 10000 ** ((k - 1) / 16)), abs=1e-6)
    assert enc[i, 4].item() == pytest.approx(math.sin(i / 10000 ** (4 / 16)), abs=1e-6)


@pytest.mark.parametrize("name", ["tiny", "tiny-paper"])
def test_loss_of_a_split_batch_adds_up_to_the_whole_and_gradients_stay_finite(name):
    model = tiny(name)
    model.train()
    tokens, values, kinds = random_batch(4, 20, model.config.vocab_size)
    targets, target_values = tokens[:, 1:], values[:, 1:]
    tokens, values, kinds = tokens[:, :-1], values[:, :-1], kinds[:, 1:].clamp(min=1)
    targets[1, 15:] = 0  # padding is ignored
    logits, cont = model(tokens, values, kinds=kinds)
    whole = loss_sums(logits, cont, targets, target_values, model.config, kinds)
    halves = [loss_sums(logits[s], cont[s], targets[s], target_values[s], model.config, kinds[s])
              for s in (slice(0, 2), slice(2, 4))]
    assert sum(whole.kind_counts) == whole.n_values
    assert whole.n_tokens == sum(h.n_tokens for h in halves) == int((targets != 0).sum())
    assert whole.n_values == int((targets == NUM).sum())
    torch.testing.assert_close(whole.ce_sum, halves[0].ce_sum + halves[1].ce_sum)
    torch.testing.assert_close(whole.mse_sum, halves[0].mse_sum + halves[1].mse_sum)
    loss = combine_loss(whole, whole.n_tokens, whole.n_values, model.config)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # CE of an untrained model is about log(V)
    assert float(whole.ce_sum.detach()) / whole.n_tokens == pytest.approx(math.log(model.config.vocab_size), rel=0.1)


def test_continuous_loss_scales():
    cfg = ModelConfig(vocab_size=10, n_layer=1, n_head=1, d_model=8, n_gauss=4)
    assert cfg.cont_loss_scale == "log"
    targets = torch.tensor([[NUM, NUM]])
    target_values = torch.tensor([[0.5, 100.0]])
    cont = torch.tensor([[0.6, 110.0]])
    logits = torch.zeros(1, 2, 10)
    log = loss_sums(logits, cont, targets, target_values, cfg)
    expected = (math.log1p(0.6) - math.log1p(0.5)) ** 2 + (math.log1p(110.0) - math.log1p(100.0)) ** 2
    assert float(log.mse_sum) == pytest.approx(expected, rel=1e-4)
    cfg.cont_loss_scale = "relative"
    rel = loss_sums(logits, cont, targets, target_values, cfg)
    assert float(rel.mse_sum) == pytest.approx(0.1**2 + 0.1**2, rel=1e-4)
    cfg.cont_loss_scale = "absolute"
    absolute = loss_sums(logits, cont, targets, target_values, cfg)
    assert float(absolute.mse_sum) == pytest.approx(0.1**2 + 10.0**2, rel=1e-4)


def test_load_model_round_trip_without_pickle(tmp_path):
    model = tiny()
    save_model_dir(tmp_path / "best", model, {"model_config": model.config.to_dict(), "vocab_hash": "x", "step": 3})
    loaded, meta = load_model(tmp_path)  # a training output dir: its best/ is used
    assert meta["step"] == 3 and meta["vocab_hash"] == "x"
    assert loaded.config == model.config
    tokens, values, kinds = random_batch(2, 9, model.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens, values, kinds=kinds), model(tokens, values, kinds=kinds))
    assert meta["format"] == CHECKPOINT_FORMAT == "matra-hpc/checkpoint/2"
    # a checkpoint of format 1 (before typed value slots) is refused with the reason, also when
    # it is found through a training output directory
    paper = tiny("tiny-paper")
    save_model_dir(tmp_path / "old" / "best", paper, {"format": "matra-hpc/checkpoint/1", "step": 1,
                                                      "model_config": paper.config.to_dict()})
    for path in (tmp_path / "old" / "best", tmp_path / "old"):
        with pytest.raises(CheckpointError, match="format 'matra-hpc/checkpoint/1'.*train a new model"):
            load_model(path)
    (tmp_path / "best" / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(CheckpointError):
        load_model(tmp_path)
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "nowhere")


def test_a_checkpoint_is_resolved_once_and_loaded_only_if_unchanged(tmp_path):
    """The hash a stage records is the hash of the weights it loads, even if best/ is rewritten."""
    from matra_hpc.model import describe_checkpoint

    model = tiny()
    meta = {"model_config": model.config.to_dict(), "vocab_hash": "x", "step": 3}
    save_model_dir(tmp_path / "best", model, meta)
    first = describe_checkpoint(tmp_path)
    assert first.path == (tmp_path / "best").resolve() and first.meta["step"] == 3
    load_model(first.path, expect_sha256=first.sha256)  # unchanged: loads
    save_model_dir(tmp_path / "best", model, {**meta, "step": 4})  # training writes a new best/
    assert describe_checkpoint(first.path).sha256 != first.sha256
    with pytest.raises(CheckpointError, match="changed since it was recorded"):
        load_model(first.path, expect_sha256=first.sha256)


def test_config_files_reject_unknown_keys_and_a_vocab_size(tmp_path):
    with pytest.raises(UsageError, match="valid keys"):
        ModelConfig.from_dict({"vocab_size": 10, "n_layers": 2})
    bad = tmp_path / "m.yaml"
    bad.write_text("n_layer: 2\nvocab_size: 10\n")
    with pytest.raises(UsageError, match="vocab_size"):
        load_model_config(str(bad), 100)
    with pytest.raises(UsageError, match="unknown model"):
        load_model_config("no-such-model", 100)
    cfg = ModelConfig.from_dict(load_model_config("tiny", 100).to_dict())
    assert cfg == load_model_config("tiny", 100)


def test_log_scale_head_returns_values_in_their_units():
    # The head learns in symlog space; forward maps back, so the sampler sees Angstrom and degrees.
    torch.manual_seed(0)
    model = tiny("tiny-paper")
    assert model.config.cont_loss_scale == "log"
    with torch.no_grad():
        model.cont_head.bias.fill_(math.log1p(5.0))
        model.cont_head.weight.zero_()
        tokens, values, _ = random_batch(2, 5, model.config.vocab_size)
        _, cont = model(tokens, values)
    torch.testing.assert_close(cont, torch.full_like(cont, 5.0))
