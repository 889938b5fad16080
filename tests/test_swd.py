"""The SWD metric: Laplacian pyramid, ~0 for identical sets, growing with a shifted distribution, the eval command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_generator
from PIL import Image

from ganserve.cli import main
from ganserve.models.weights import save_model
from ganserve.train.swd import laplacian_pyramid, level_resolutions, pyr_up, swd_between


def _discs(n: int, size: int = 32, seed: int = 0, radius: float = 6.0, shift: int = 0) -> torch.Tensor:
    """uint8 [n, 3, size, size]: noisy coloured discs; `shift` brightens, `radius` changes the shapes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        cx, cy = rng.uniform(size * 0.3, size * 0.7, 2)
        img = rng.normal(40, 10, (size, size, 3))
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < radius**2] = rng.uniform(100, 200, 3)
        out[i] = np.clip(img + shift, 0, 255)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def test_laplacian_pyramid_reconstructs_the_image():
    x = torch.rand(2, 3, 32, 32) * 255
    levels = laplacian_pyramid(x, 3)
    assert [lv.shape[-1] for lv in levels] == [32, 16, 8]
    rec = levels[-1]
    for lv in reversed(levels[:-1]):
        rec = pyr_up(rec) + lv
    assert torch.allclose(rec, x, atol=1e-3)
    assert level_resolutions(64) == [64, 32, 16]
    with pytest.raises(ValueError, match="at least 16x16"):
        level_resolutions(8)


def test_swd_is_zero_for_identical_sets():
    a = _discs(48)
    result = swd_between(a, a.clone(), 32)
    assert set(result) == {"32", "16", "avg"}
    assert all(v == pytest.approx(0.0, abs=1e-6) for v in result.values())


def test_swd_grows_with_a_shifted_distribution_and_exceeds_the_floor():
    ref = _discs(64, seed=1)
    floor = swd_between(_discs(64, seed=2), ref, 32)["avg"]
    small = swd_between(_discs(64, seed=2, radius=8), ref, 32)["avg"]
    large = swd_between(_discs(64, seed=2, radius=11, shift=40), ref, 32)["avg"]
    assert floor < small < large
    assert large > 3 * floor
    # batches give the same answer as one tensor
    assert swd_between([ref[:32], ref[32:]], _discs(64, seed=2), 32)["avg"] == pytest.approx(floor, rel=1e-5)


def test_eval_command_prints_swd_next_to_the_real_vs_real_floor(tmp_path, capsys):
    model = save_model(tiny_generator("progan", resolution=16), tmp_path / "m")
    data = tmp_path / "data"
    data.mkdir()
    for i, im in enumerate(_discs(40, size=16).permute(0, 2, 3, 1).numpy()):
        Image.fromarray(im).save(data / f"{i}.png")
    assert main(["eval", "--model", str(model), "--data", str(data), "--num", "16", "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num"] == 16 and set(result["fake"]) == {"16", "avg"}
    assert result["fake"]["avg"] > result["floor"]["avg"] > 0  # an untrained model is far from the data
    assert main(["eval", "--model", str(model), "--data", str(data), "--num", "500", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "n=20" in out and "real vs real (floor)" in out and "generated vs real" in out
    assert main(["eval", "--model", str(model), "--data", str(tmp_path / "nope")]) == 2
    assert "no such file" in capsys.readouterr().err
