"""Differentiable augmentation of the discriminator's inputs: what each augmentation does to an image, that draws
are per image and reproducible, that gradients reach the generator, and how a run is told to use it."""

from __future__ import annotations

import pytest
import torch

from ganserve.cli import main
from ganserve.errors import ConfigError
from ganserve.train.augment import augment, color, cutout, translation
from ganserve.train.config import TrainConfig, parse_augment


def images(n: int = 32, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """x moved down by dy and right by dx, zeros where nothing moved in."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def test_translation_moves_each_image_by_its_own_whole_pixel_shift_of_up_to_an_eighth():
    x = images(n=64, size=16)
    y = translation(x, gen())
    shifts = set()
    for i in range(len(x)):
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if torch.equal(y[i], shifted(x[i], dy, dx))]
        assert len(found) == 1, f"image {i} is not one shifted copy of its input"
        shifts.add(found[0])
    assert len(shifts) > 10  # 25 possible shifts, drawn per image


def test_cutout_erases_one_half_side_square_per_image_and_leaves_the_rest():
    x = images(n=64, size=16) * 0.5 + 0.6  # no zero pixels of its own
    y = cutout(x, gen())
    kept = y == x
    assert torch.equal(kept, kept[:, :1].expand_as(kept))  # the same pixels in every channel
    erased = ~kept[:, 0]
    assert (y[:, 0][erased] == 0).all()
    for i in range(len(x)):
        rows, cols = erased[i].any(dim=1), erased[i].any(dim=0)
        assert 1 <= rows.sum() <= 8 and 1 <= cols.sum() <= 8
        assert erased[i].sum() == rows.sum() * cols.sum()  # one rectangle: the square, cut by the border
    assert (erased.sum(dim=(1, 2)) == 64).sum() >= 8  # most squares lie wholly inside


def test_color_changes_brightness_saturation_and_contrast_per_image_smoothly():
    x = images(n=8)
    y = color(x, gen())
    assert y.shape == x.shape and not torch.equal(y, x)
    # each image is an affine map of its own pixels: the same x gives the same y within an image
    change = (y[:, 0] - y[:, 1]) / (x[:, 0] - x[:, 1])
    assert torch.allclose(change, change[:, :1, :1].expand_as(change), rtol=1e-3, atol=1e-4)
    assert change[:, 0, 0].unique().numel() == 8


def test_draws_are_reproducible_from_the_generator_and_gradients_pass_through():
    x = images().requires_grad_(True)
    policy = parse_augment("cutout, translation,color")
    a, b = augment(x, policy, gen(3)), augment(x, policy, gen(3))
    assert torch.equal(a, b) and not torch.equal(a, augment(x, policy, gen(4)))
    a.square().sum().backward()
    assert x.grad is not None and (x.grad != 0).float().mean() > 0.3
    assert augment(x, (), gen()) is x
    last = augment(images().contiguous(memory_format=torch.channels_last), policy, gen())
    assert last.is_contiguous(memory_format=torch.channels_last)


def test_the_policy_is_a_comma_list_of_known_names_and_bad_ones_are_refused(tmp_path, capsys):
    assert parse_augment("") == parse_augment("none") == ()
    assert parse_augment("translation,cutout") == ("translation", "cutout")
    with pytest.raises(ConfigError, match="unknown augmentation 'flip'.*translation, cutout, or none"):
        TrainConfig(augment="translation,flip")
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--augment", "rotate"]) == 2
    assert "unknown augmentation 'rotate'" in capsys.readouterr().err
