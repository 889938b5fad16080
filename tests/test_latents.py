from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from ganserve.errors import SpecError
from ganserve.models.latents import (
    layer_presets,
    noise_for_seed,
    parse_layers,
    seed_to_z,
    seeds_to_z,
    style_mixing,
    truncation,
    truncation_psi_rows,
)
from ganserve.schema import MAX_SEED, check_psi, parse_seeds


def test_seed_to_z_follows_the_nvlabs_randomstate_convention():
    z = seed_to_z(42, 512)
    assert z.dtype == np.float32 and z.shape == (512,)
    assert np.array_equal(z, np.random.RandomState(42).randn(512).astype(np.float32))
    assert np.array_equal(seeds_to_z([42, 7], 512)[1], seed_to_z(7, 512))
    assert np.array_equal(seed_to_z(MAX_SEED, 8), np.random.RandomState(MAX_SEED).randn(8).astype(np.float32))


def test_seed_to_z_reuses_no_state_between_seeds_or_threads():
    # odd sizes leave a cached gaussian in a RandomState; reseeding must drop it, and threads must not share one
    expected = {(s, d): np.random.RandomState(s).randn(d).astype(np.float32) for s in range(20) for d in (1, 3, 7, 128)}
    for (s, d), z in expected.items():
        assert np.array_equal(seed_to_z(s, d), z)

    def check(offset: int) -> bool:
        keys = list(expected)
        return all(np.array_equal(seed_to_z(*keys[(i + offset) % len(keys)]), expected[keys[(i + offset) % len(keys)]])
                   for i in range(len(keys) * 20))

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(check, range(0, 80, 20)))


def test_seed_to_z_ignores_the_global_rng():
    np.random.seed(1)
    a = seed_to_z(3, 16)
    np.random.seed(2)
    np.random.randn(100)
    assert np.array_equal(a, seed_to_z(3, 16))


@pytest.mark.parametrize("spec, expected", [
    ("0-3", [0, 1, 2, 3]),
    ("1,2,5-7", [1, 2, 5, 6, 7]),
    (" 9 , 3 ", [9, 3]),
    ("4294967295", [MAX_SEED]),
    (42, [42]),
    ([3, 1], [3, 1]),
])
def test_parse_seeds_accepts_lists_and_ranges(spec, expected):
    assert parse_seeds(spec) == expected


@pytest.mark.parametrize("spec, message", [
    ("", "empty"),
    ("5-2", "backwards"),
    ("1,x", "bad seed 'x'"),
    ("-3", "bad seed"),
    ("1.5", "bad seed '1.5'"),
    ("4294967296", "4294967295"),
    ([1, -1], "got -1"),
    ([True], "got True"),
    ("0-999999999", "too many seeds"),
    ("0\x1f", r"bad seed '0\\x1f'"),  # whitespace to str.strip and to re's \s, but not to int()
    ("\u0663", "bad seed"),  # a digit to re's \d (ARABIC-INDIC THREE), but not a seed
])
def test_parse_seeds_names_the_problem(spec, message):
    with pytest.raises(SpecError, match=message):
        parse_seeds(spec, max_count=1000)


def test_layer_presets_map_resolutions_to_ws_indices():
    assert layer_presets(1024)["coarse"] == (0, 1, 2, 3)
    assert layer_presets(1024)["middle"] == (4, 5, 6, 7)
    assert layer_presets(1024)["fine"] == tuple(range(8, 18))
    assert layer_presets(64)["fine"] == (8, 9)
    assert layer_presets(16)["fine"] == ()


@pytest.mark.parametrize("spec, expected", [
    ("coarse", (0, 1, 2, 3)),
    ("FINE", (8, 9)),
    ("all", tuple(range(10))),
    ("2-4", (2, 3, 4)),
    ("0,1,6-7", (0, 1, 6, 7)),
    ([5, 1, 1], (1, 5)),
])
def test_parse_layers(spec, expected):
    assert parse_layers(spec, 64) == expected


@pytest.mark.parametrize("spec, resolution, message", [
    ("fine", 16, "empty at resolution 16"),
    ("0-10", 64, r"out of range: this model has layers 0-9"),
    ("4-2", 64, "backwards"),
    ("bogus", 64, "bad mix_layers"),
    ("", 64, "empty"),
    ([1.5], 64, "integers"),
    ("1\x1f,2", 64, "bad mix_layers"),
])
def test_parse_layers_names_the_problem(spec, resolution, message):
    with pytest.raises(SpecError, match=message):
        parse_layers(spec, resolution)


@pytest.mark.parametrize("psi", [float("nan"), float("inf"), -1.5, 2.5, "x", None, True])
def test_psi_must_be_finite_and_in_range(psi):
    with pytest.raises(SpecError, match="psi"):
        check_psi(psi)


def test_truncation_is_exact_at_zero_and_one_and_respects_the_cutoff():
    ws = torch.randn(2, 6, 4)
    w_avg = torch.randn(4)
    assert torch.equal(truncation(ws, w_avg, 1.0), ws)
    assert torch.equal(truncation(ws, w_avg, 0.0), w_avg.expand_as(ws))
    psi = torch.from_numpy(truncation_psi_rows([0.5, 0.0], 6, cutoff=2))
    out = truncation(ws, w_avg, psi)
    torch.testing.assert_close(out[0, :2], w_avg + 0.5 * (ws[0, :2] - w_avg))
    assert torch.equal(out[0, 2:], ws[0, 2:])
    assert torch.equal(out[1, :2], w_avg.expand(2, 4))
    with pytest.raises(SpecError, match="cutoff"):
        truncation_psi_rows([0.5], 6, cutoff=7)


@pytest.mark.parametrize("scale", [0.01, 1.0, 30.0])
def test_truncation_and_mixing_in_numpy_give_torchs_bits(scale):
    """ONNX Runtime on the CPU truncates and mixes in numpy: bit for bit what torch.lerp / torch.where give, for psi
    on both sides of 0.5 (where torch.lerp switches formula), the ends, and outside [0, 1]."""
    rng = np.random.default_rng(int(scale * 100))
    ws = (rng.standard_normal((64, 10, 128)) * scale).astype(np.float32)
    ws_mix = rng.standard_normal((64, 10, 128)).astype(np.float32)
    w_avg = rng.standard_normal(128).astype(np.float32)
    psi = rng.choice(np.float32([0, 1, 0.5, 0.4999999, 0.7, -0.3, 1.5, -2, 2]), size=(64, 10))
    psi[32:] = rng.uniform(-2, 2, size=(32, 10))
    mask = rng.random((64, 10)) < 0.5
    got = style_mixing(truncation(ws, w_avg, psi), truncation(ws_mix, w_avg, psi), mask)
    t = [torch.from_numpy(a) for a in (ws, ws_mix, w_avg, psi, mask)]
    want = style_mixing(truncation(t[0], t[2], t[3]), truncation(t[1], t[2], t[3]), t[4]).numpy()
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.array_equal(got.view(np.int32), want.view(np.int32))


def test_style_mixing_replaces_only_the_masked_layers():
    ws, ws_mix = torch.zeros(2, 4, 3), torch.ones(2, 4, 3)
    mask = torch.tensor([[True, False, False, True], [False] * 4])
    out = style_mixing(ws, ws_mix, mask)
    assert out[0, :, 0].tolist() == [1, 0, 0, 1]
    assert out[1].sum() == 0


def test_random_noise_is_reproducible_per_seed_and_distinct_from_z():
    a, b = noise_for_seed(5, [4, 8]), noise_for_seed(5, [4, 8])
    assert [x.shape for x in a] == [(1, 4, 4), (1, 8, 8)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(noise_for_seed(6, [4])[0], a[0])
    assert not np.allclose(a[0].ravel(), seed_to_z(5, 16))


def test_each_spec_error_names_the_request_field_it_concerns():
    from conftest import tiny_config

    from ganserve.inference.sampling import make_spec

    config = tiny_config("stylegan")
    cases = [
        (lambda: check_psi(5), "psi"),
        (lambda: parse_seeds("3-1"), "seeds"),
        (lambda: parse_layers("9-1", 16), "mix_layers"),
        (lambda: make_spec(config, 1, noise="loud"), "noise"),
        (lambda: make_spec(config, 1, mix_layers="coarse"), "mix_seed"),
        (lambda: make_spec(config, 1, truncation_cutoff=99), "truncation_cutoff"),
        (lambda: make_spec(config, 1, mix_seed=-1), "mix_seed"),
        (lambda: make_spec(config, 2**32), "seed"),
    ]
    for call, field in cases:
        with pytest.raises(SpecError) as e:
            call()
        assert e.value.field == field, (field, str(e.value))
