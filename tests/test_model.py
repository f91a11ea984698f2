"""WeatherMixer shapes, patches, FLOP formula, the token-split rule and WB2 latitude weights."""
import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from jigsaw_ds.config import ModelConfig
from jigsaw_ds.model import WeatherMixer, forward_flops_per_sample
from jigsaw_ds.parallel.partition import TokenPartition
from jigsaw_ds.grid import lat_cell_weights
from jigsaw_ds.train.loss import AreaWeightedMSE

CFG = ModelConfig(patch=4, embed_dim=16, token_hidden=12, channel_hidden=24, depth=2)


def test_shapes_and_residual_prediction():
    m = WeatherMixer(CFG, 33, 64, 7, 5)
    x = torch.randn(3, 7, 33, 64)
    y = m(x)
    assert y.shape == (3, 5, 33, 64)
    with torch.no_grad():
        m.tendency_scale.zero_()
    assert torch.equal(m(x), x[:, :5])  # with zero tendency the model is persistence


@pytest.mark.parametrize("n_lat", [32, 33, 35])
def test_unpatchify_inverts_patchify(n_lat):
    m = WeatherMixer(CFG, n_lat, 64, 7, 7)
    x = torch.randn(2, 7, n_lat, 64)
    tokens = m.patchify(x)
    assert tokens.shape == (m.partition.n_tokens, 2, 7 * 16)
    assert torch.equal(m.unpatchify(tokens, n_lat, 64), x)


def test_padding_repeats_last_row():
    m = WeatherMixer(CFG, 33, 64, 1, 1)
    x = torch.arange(33.0).view(1, 1, 33, 1).expand(1, 1, 33, 64)
    tokens = m.patchify(x)  # last token row holds pixel rows 32 (real) and 33..35 (padding)
    last = tokens[-16:].reshape(16, 1, 1, 4, 4)
    assert torch.all(last[:, 0, 0, :, :] == 32.0)


def test_flops_formula_matches_flop_counter():
    m = WeatherMixer(CFG, 33, 64, 7, 5)
    x = torch.randn(2, 7, 33, 64)
    with FlopCounterMode(display=False) as counter:
        m(x)
    assert counter.get_total_flops() == 2 * forward_flops_per_sample(CFG, 33, 64, 7, 5)


def test_flops_grow_linearly_with_grid():
    small = forward_flops_per_sample(CFG, 32, 64, 7, 5)
    big = forward_flops_per_sample(CFG, 64, 128, 7, 5)
    assert big == 4 * small


def test_init_does_not_depend_on_construction_order():
    a, b = WeatherMixer(CFG, 33, 64, 7, 5, seed=3), WeatherMixer(CFG, 33, 64, 7, 5, seed=3)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n
    c = WeatherMixer(CFG, 33, 64, 7, 5, seed=4)
    assert not torch.equal(a.embed.weight, c.embed.weight)


def test_token_partition_rule():
    p = TokenPartition(n_lat=33, n_lon=32, patch=4, domain=4, tensor=2)  # 9 token rows, 8 token cols
    assert [p.rows_of(d) for d in range(4)] == [(0, 3), (3, 5), (5, 7), (7, 9)]
    assert [p.cols_of(t) for t in range(2)] == [(0, 4), (4, 8)]
    assert p.lat_slice(3) == slice(28, 33) and p.pad_rows(3) == 3 and p.pad_rows(0) == 0
    owned = torch.cat([p.token_index(d, t) for d in range(4) for t in range(2)])
    assert sorted(owned.tolist()) == list(range(p.n_tokens))  # every token exactly once
    with pytest.raises(ValueError, match="parallel.tensor = 3"):
        TokenPartition(33, 32, 4, 1, 3)


def test_lat_weights_pole_including_grid_by_hand():
    # 90, 0, -90: bounds +-90 and +-45 -> areas 1 - sin45, 2 sin45, 1 - sin45 -> normalised to mean 1
    s = np.sin(np.pi / 4)
    area = np.array([1 - s, 2 * s, 1 - s])
    np.testing.assert_allclose(lat_cell_weights([90.0, 0.0, -90.0]), area / area.mean(), rtol=1e-12)


def test_lat_weights_pole_less_grid_by_hand():
    # -45, 45 (ascending, no poles): bounds -90, 0, 90 -> equal areas
    np.testing.assert_allclose(lat_cell_weights([-45.0, 45.0]), [1.0, 1.0])
    lat = np.array([-60.0, 0.0, 60.0])
    bounds = np.deg2rad([-90, -30, 30, 90])
    area = np.diff(np.sin(bounds))
    np.testing.assert_allclose(lat_cell_weights(lat), area / area.mean(), rtol=1e-12)
    np.testing.assert_allclose(lat_cell_weights(lat[::-1]), (area / area.mean())[::-1], rtol=1e-12)


def test_lat_weights_regional_grid_are_cos_latitude_like():
    # 57N..49N (a UK box): the edge rows get ordinary half-step cells, not the cap up to the pole
    lat = np.linspace(57, 49, 33)
    w = lat_cell_weights(lat)
    np.testing.assert_allclose(w, np.cos(np.deg2rad(lat)) / np.cos(np.deg2rad(lat)).mean(), rtol=1e-4)
    # a global offset grid (no pole rows, half a step from the poles) keeps WB2's pole bounds
    offset = np.linspace(-87.1875, 87.1875, 32)
    bounds = np.deg2rad(np.concatenate([[-90], (offset[:-1] + offset[1:]) / 2, [90]]))
    area = np.diff(np.sin(bounds))
    np.testing.assert_allclose(lat_cell_weights(offset), area / area.mean(), rtol=1e-12)


def test_weighted_mse_is_weighted_mean():
    w = torch.tensor([0.5, 1.5])
    pred, target = torch.ones(1, 1, 2, 3), torch.zeros(1, 1, 2, 3)
    pred[0, 0, 1] = 2.0
    expected = (0.5 * 1 * 3 + 1.5 * 4 * 3) / 6
    assert AreaWeightedMSE(w, 2, 3)(pred, target).item() == pytest.approx(expected)


@pytest.mark.parametrize("noise", [{}, {"drop_path": 0.3, "dropout": 0.3}])
def test_activation_checkpointing_gives_the_same_gradients(noise):
    """With training noise too: the recomputed blocks use the masks of the first pass."""
    import dataclasses

    x = torch.randn(2, 7, 33, 64)
    grads = []
    for ckpt in (False, True):
        m = WeatherMixer(dataclasses.replace(CFG, activation_checkpointing=ckpt, **noise), 33, 64, 7, 5, seed=1)
        torch.manual_seed(3)
        m(x).square().mean().backward()
        grads.append([p.grad.clone() for p in m.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_dropout_only_in_training():
    """model.dropout changes a training forward; evaluation and no_grad draw no masks (the random stream
    stays where it was) and give the plain model's output."""
    import dataclasses

    x = torch.randn(2, 7, 33, 64)
    plain = WeatherMixer(CFG, 33, 64, 7, 5, seed=1)
    noisy = WeatherMixer(dataclasses.replace(CFG, dropout=0.3), 33, 64, 7, 5, seed=1)
    with torch.no_grad():
        expected = plain(x)
        torch.manual_seed(0)
        assert torch.equal(noisy(x), expected)
        assert torch.equal(torch.get_rng_state(), torch.manual_seed(0).get_state())
    noisy.eval()
    assert torch.equal(noisy(x), expected)
    noisy.train()
    assert not torch.allclose(noisy(x), expected, atol=1e-3)


def test_rollout_feeds_back_the_newest_states_and_drops_the_oldest():
    """rollout with history H: step k's input is [state_k, .., state_k-H, constants, forcings[k]]."""
    from jigsaw_ds.model import rollout

    seen = []

    def step(x):  # a "model" that records its input and returns a new state from it
        seen.append(x.clone())
        return x[:, :2] + 10 * (len(seen))

    s0, s1, s2, const, forc = (torch.full((1, 2, 1, 1), float(v)) for v in (0, -1, -2, 7, 0))
    forcings = torch.arange(3.0).view(1, 3, 1, 1, 1)
    x = torch.cat([s0, s1, s2, const], dim=1)
    out = list(rollout(step, x, 3, n_state=2, forcings=forcings, history=2))
    assert [o.flatten().tolist() for o in out] == [[10, 10], [30, 30], [60, 60]]
    assert seen[1].flatten().tolist() == [10, 10, 0, 0, -1, -1, 7, 7, 1]
    assert seen[2].flatten().tolist() == [30, 30, 10, 10, 0, 0, 7, 7, 2]


def test_an_accumulated_micro_batch_draws_the_noise_of_its_samples_in_the_whole_batch():
    """Gradient accumulation: a micro-batch starting at global sample 2 draws the masks that samples 2 and 3
    of the whole batch draw (noise keyed by the sample's index in the global batch, not by the micro-batch)."""
    from dataclasses import replace

    m = WeatherMixer(replace(CFG, drop_path=0.3, dropout=0.2), 33, 64, 7, 5).train()
    m.start_step(4)
    whole = m.noise_seeds(4)
    m.start_step(4, first_sample=2)
    assert np.array_equal(m.noise_seeds(2), whole[2:])
    m.start_step(4, first_sample=0)
    assert np.array_equal(m.noise_seeds(2), whole[:2]) and not np.array_equal(whole[:2], whole[2:])
