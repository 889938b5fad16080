import numpy as np
import pytest
import torch
from conftest import tiny_generator

from ganserve.errors import SpecError
from ganserve.imaging import to_uint8
from ganserve.inference.sampling import make_spec, make_specs, prepare_batch, run_eager
from ganserve.models.latents import seeds_to_z


def generate(G, seeds, **params) -> np.ndarray:
    specs = make_specs(G.config, seeds, **params)
    return run_eager(G, prepare_batch(specs, G.config, G.noise_resolutions())).numpy()


def generate_specs(G, specs) -> np.ndarray:
    return run_eager(G, prepare_batch(specs, G.config, G.noise_resolutions())).numpy()


@pytest.mark.parametrize("params", [{}, {"psi": 0.7}, {"noise": "random"}])
def test_same_seed_same_image_in_one_batch_and_one_at_a_time(arch, params):
    G = tiny_generator(arch)
    batch = generate(G, list(range(8)), **params)
    single = np.concatenate([generate(G, [s], **params) for s in range(8)])
    assert batch.shape == (8, 16, 16, 3) and batch.dtype == np.uint8
    assert np.array_equal(batch, single)
    pairs = np.concatenate([generate(G, [s, s + 1], **params) for s in range(0, 8, 2)])
    assert np.array_equal(batch, pairs)


def test_image_does_not_depend_on_its_batch_neighbours():
    G = tiny_generator("stylegan")
    specs = [make_spec(G.config, 3, psi=0.5)]
    alone = generate_specs(G, specs)[0]
    crowd = [make_spec(G.config, s, psi=p, mix_seed=9, noise="random") for s, p in ((1, 1.0), (2, -0.5))]
    assert np.array_equal(generate_specs(G, crowd + specs + crowd)[2], alone)


def test_generation_matches_the_plain_forward_pass(arch):
    G = tiny_generator(arch)
    z = torch.from_numpy(seeds_to_z([11, 12, 13], G.config.z_dim))
    assert np.array_equal(generate(G, [11, 12, 13]), to_uint8(G(z)).numpy())


def test_psi_zero_gives_the_same_image_for_every_seed(arch):
    G = tiny_generator(arch)
    images = generate(G, [0, 1, 2, 99], psi=0.0)
    assert all(np.array_equal(images[0], im) for im in images[1:])
    assert not np.array_equal(generate(G, [0])[0], generate(G, [1])[0])


def test_truncation_moves_images_towards_the_average(arch):
    G = tiny_generator(arch)
    centre = generate(G, [5], psi=0.0)[0].astype(float)
    dist = [np.abs(generate(G, [5], psi=psi)[0] - centre).mean() for psi in (1.0, 0.5, 0.1)]
    assert dist[0] > dist[1] > dist[2]


def test_mixing_all_layers_from_seed_b_gives_seed_bs_image():
    G = tiny_generator("stylegan")
    b = generate(G, [7], psi=0.8)[0]
    mixed = generate(G, [3], psi=0.8, mix_seed=7, mix_layers="all")[0]
    assert np.array_equal(mixed, b)


def test_mixing_coarse_layers_changes_the_image_but_keeps_it_apart_from_b():
    G = tiny_generator("stylegan", resolution=64)
    a, b = generate(G, [3])[0], generate(G, [7])[0]
    for layers in ("coarse", "middle", "fine", "0-1"):
        mixed = generate(G, [3], mix_seed=7, mix_layers=layers)[0]
        assert not np.array_equal(mixed, a), layers
        assert not np.array_equal(mixed, b), layers


def test_random_noise_is_reproducible_and_differs_from_const_noise():
    G = tiny_generator("stylegan")
    const = generate(G, [4])[0]
    random1, random2 = generate(G, [4], noise="random")[0], generate(G, [4], noise="random")[0]
    assert np.array_equal(random1, random2)
    assert not np.array_equal(random1, const)


def test_mixing_on_progan_is_refused():
    G = tiny_generator("progan")
    with pytest.raises(SpecError, match="style mixing needs a StyleGAN"):
        make_spec(G.config, 1, mix_seed=2, mix_layers="coarse")


@pytest.mark.parametrize("params, message", [
    (dict(mix_layers="coarse"), "without mix_seed"),
    (dict(mix_seed=-1), "mix_seed"),
    (dict(noise="loud"), "noise"),
    (dict(psi=float("nan")), "psi"),
    (dict(truncation_cutoff=99), "cutoff"),
])
def test_bad_parameters_name_the_problem(params, message):
    G = tiny_generator("stylegan")
    with pytest.raises(SpecError, match=message):
        make_spec(G.config, 1, **params)


def test_greyscale_models_give_one_channel_images():
    G = tiny_generator("stylegan", img_channels=1)
    assert generate(G, [1, 2]).shape == (2, 16, 16, 1)
