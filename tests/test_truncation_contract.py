"""Truncation as DESIGN.md states it, checked against an independent computation, outside [0, 1] and with a cutoff.

`w = w_avg + psi * (w - w_avg)` for psi in [-1, 2], on ws layers below `truncation_cutoff` (default all). Nothing may
clamp psi to [0, 1], and a cutoff k must leave layers k and up untouched. The reference here recomputes ws from the
seed (NVlabs' RandomState convention) and the model's own mapping network, then applies the formula by hand.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ganserve.imaging import to_uint8
from ganserve.inference.registry import load_backend
from ganserve.inference.sampling import batch_styles, make_specs

PSIS_OUTSIDE_0_1 = [-1.0, -0.5, 1.5, 2.0]
SEEDS = [3, 4, 11]


@pytest.fixture(scope="module")
def backends(model_dirs):
    return {arch: load_backend(model_dirs[arch], "torch", "cpu") for arch in ("stylegan", "progan")}


def independent_ws(G, seeds, psi: float, cutoff: int | None = None) -> torch.Tensor:
    """ws by hand: z from RandomState(seed), the mapping network, then the truncation formula on layers < cutoff."""
    z = torch.from_numpy(np.stack([np.random.RandomState(s).randn(G.config.z_dim) for s in seeds]).astype(np.float32))
    with torch.no_grad():
        ws = G.mapping(z)
        k = ws.shape[1] if cutoff is None else cutoff
        return torch.cat([G.w_avg + psi * (ws[:, :k] - G.w_avg), ws[:, k:]], dim=1)


def independent_images(G, seeds, psi: float, cutoff: int | None = None) -> np.ndarray:
    with torch.no_grad():
        return to_uint8(G.synthesis(independent_ws(G, seeds, psi, cutoff))).numpy()


def library_ws(backend, seeds, **params) -> torch.Tensor:
    inputs = backend.prepare(make_specs(backend.config, seeds, **params))
    with torch.inference_mode():
        return batch_styles(backend.G.mapping, backend.G.w_avg, inputs, "cpu")


def assert_same_image(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Equal up to float rounding: the formula by hand and torch.lerp may differ in the last bit of a few ws."""
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 2 and (diff == 0).mean() >= 0.99, f"{what}: max diff {diff.max()}, {(diff != 0).mean():.2%}"


@pytest.mark.parametrize("psi", PSIS_OUTSIDE_0_1)
def test_psi_outside_0_1_follows_the_truncation_formula(backends, arch, psi):
    """psi in [-1, 0) and (1, 2] extrapolates: ws and images follow w_avg + psi * (w - w_avg), nothing clamps psi."""
    b = backends[arch]
    ws = library_ws(b, SEEDS, psi=psi)
    torch.testing.assert_close(ws, independent_ws(b.G, SEEDS, psi), rtol=1e-5, atol=1e-5)
    images = b.generate(make_specs(b.config, SEEDS, psi=psi))
    assert_same_image(images, independent_images(b.G, SEEDS, psi), f"{arch} psi={psi}")
    # and not the image of the clamped psi, nor of no truncation
    for clamped in (0.0, 1.0):
        other = b.generate(make_specs(b.config, SEEDS, psi=clamped))
        assert (images != other).any(axis=(1, 2, 3)).all(), f"{arch}: psi={psi} gives the image of psi={clamped}"


def test_psi_two_doubles_and_psi_minus_one_mirrors_the_distance_to_w_avg(backends, arch):
    b = backends[arch]
    w_avg = b.G.w_avg
    plain = library_ws(b, SEEDS, psi=1.0) - w_avg
    torch.testing.assert_close(library_ws(b, SEEDS, psi=2.0) - w_avg, 2 * plain, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(library_ws(b, SEEDS, psi=-1.0) - w_avg, -plain, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(library_ws(b, SEEDS, psi=-0.5) - w_avg, -0.5 * plain, rtol=1e-4, atol=1e-5)
    at = {psi: b.generate(make_specs(b.config, [5], psi=psi))[0] for psi in (-1.0, 0.0, 1.0, 2.0)}
    assert not np.array_equal(at[2.0], at[1.0]) and not np.array_equal(at[-1.0], at[1.0])
    assert not np.array_equal(at[-1.0], at[0.0])


@pytest.mark.parametrize("cutoff", [1, 2, 4, 5])
def test_truncation_cutoff_truncates_only_the_layers_below_it(backends, cutoff):
    """cutoff k: ws layers < k truncated, layers >= k exactly the mapping's output; the image is that ws's image."""
    b = backends["stylegan"]  # num_ws 6 at 16x16
    ws = library_ws(b, SEEDS, psi=0.3, truncation_cutoff=cutoff)
    full, untouched = library_ws(b, SEEDS, psi=0.3), library_ws(b, SEEDS, psi=1.0)
    torch.testing.assert_close(ws, independent_ws(b.G, SEEDS, 0.3, cutoff), rtol=1e-5, atol=1e-5)
    assert torch.equal(ws[:, :cutoff], full[:, :cutoff]) and torch.equal(ws[:, cutoff:], untouched[:, cutoff:])
    images = b.generate(make_specs(b.config, SEEDS, psi=0.3, truncation_cutoff=cutoff))
    assert_same_image(images, independent_images(b.G, SEEDS, 0.3, cutoff), f"cutoff={cutoff}")
    assert not np.array_equal(images, b.generate(make_specs(b.config, SEEDS, psi=0.3)))
    assert not np.array_equal(images, b.generate(make_specs(b.config, SEEDS)))


def test_truncation_cutoff_zero_is_no_truncation_and_num_ws_is_all(backends, arch):
    b = backends[arch]
    num_ws = b.config.num_ws
    none = b.generate(make_specs(b.config, SEEDS, psi=1.0))
    assert np.array_equal(b.generate(make_specs(b.config, SEEDS, psi=0.3, truncation_cutoff=0)), none)
    assert np.array_equal(b.generate(make_specs(b.config, SEEDS, psi=2.0, truncation_cutoff=0)), none)
    assert np.array_equal(b.generate(make_specs(b.config, SEEDS, psi=0.3, truncation_cutoff=num_ws)),
                          b.generate(make_specs(b.config, SEEDS, psi=0.3)))


def _cli_generate(model: str, outdir, *flags: str) -> np.ndarray:
    subprocess.run(
        [sys.executable, "-m", "ganserve.cli", "generate", "--model", model, "--seeds", "3,4", "--outdir", str(outdir),
         "--device", "cpu", "--backend", "torch", "--quiet", *flags],
        check=True, timeout=120,
    )
    return np.stack([np.asarray(Image.open(outdir / f"seed{s:04d}.png")) for s in (3, 4)])


@pytest.mark.slow
def test_cli_truncation_cutoff_and_psi_outside_0_1(backends, model_dirs, tmp_path):
    """`ganserve generate --psi -0.5 --truncation-cutoff 2` writes the library's image: ws truncated below layer 2."""
    b = backends["stylegan"]
    got = _cli_generate(model_dirs["stylegan"], tmp_path / "a", "--psi", "-0.5", "--truncation-cutoff", "2")
    assert np.array_equal(got, b.generate(make_specs(b.config, [3, 4], psi=-0.5, truncation_cutoff=2)))
    assert_same_image(got, independent_images(b.G, [3, 4], -0.5, 2), "CLI cutoff=2 psi=-0.5")
    assert not np.array_equal(got, b.generate(make_specs(b.config, [3, 4], psi=-0.5)))
    assert not np.array_equal(got, b.generate(make_specs(b.config, [3, 4])))
    zero = _cli_generate(model_dirs["stylegan"], tmp_path / "b", "--psi", "2", "--truncation-cutoff", "0")
    assert np.array_equal(zero, b.generate(make_specs(b.config, [3, 4])))
