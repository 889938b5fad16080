"""Training data: decoding, compositing, resizing, zip/folder sources, bad data, and the deterministic batch order."""

from __future__ import annotations

import io
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ganserve.cli import main
from ganserve.train.config import Phase
from ganserve.train.data import BatchSource, DataError, image_pyramid, load_image, load_images, natural_resolution


def write_disc_images(root: Path, n: int = 48, size: int = 24, seed: int = 0, nested: bool = True) -> Path:
    """n PNGs of a coloured disc at a random place on a dark background (half of them in a sub-folder)."""
    rng = np.random.default_rng(seed)
    (root / "sub").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        cx, cy = rng.integers(size // 4, 3 * size // 4, 2)
        img = np.full((size, size, 3), 30, np.uint8)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < (size // 5) ** 2] = rng.integers(60, 255, 3)
        Image.fromarray(img).save(root / ("sub" if nested and i % 2 else "") / f"img{i:03d}.png")
    return root


def _png(im: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def test_rgba_is_composited_over_the_background_colour():
    im = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red
    im.putpixel((0, 0), (255, 0, 0, 255))
    white = load_image(_png(im), 8)
    assert white.shape == (3, 8, 8) and white.dtype == np.uint8
    assert tuple(white[:, 4, 4]) == (255, 255, 255) and tuple(white[:, 0, 0]) == (255, 0, 0)
    black = load_image(_png(im), 8, background=(0, 0, 0))
    assert tuple(black[:, 4, 4]) == (0, 0, 0)


def test_palette_greyscale_and_channels_are_converted():
    pal = Image.new("P", (8, 8))
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.paste(1, (0, 0, 8, 8))
    assert tuple(load_image(_png(pal), 8)[:, 3, 3]) == (10, 200, 30)
    grey = Image.new("L", (8, 8), 77)
    rgb = load_image(_png(grey), 8)
    assert rgb.shape == (3, 8, 8) and (rgb == 77).all()
    one = load_image(_png(Image.new("RGB", (8, 8), (0, 255, 0))), 8, channels=1)
    assert one.shape == (1, 8, 8) and 140 < int(one[0, 0, 0]) < 160  # luma of pure green


def test_resize_is_lanczos_after_a_centre_crop():
    im = np.zeros((16, 32, 3), np.uint8)
    im[:, :8] = (255, 0, 0)  # left and right bands are cropped away
    im[:, 24:] = (0, 0, 255)
    im[:, 8:24] = (0, 255, 0)
    out = load_image(_png(Image.fromarray(im)), 8)
    assert out.shape == (3, 8, 8) and (out[1] == 255).all() and (out[0] == 0).all()
    ramp = np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], (64, 1, 3))
    small = load_image(_png(Image.fromarray(ramp)), 16)
    expected = np.asarray(Image.fromarray(ramp).resize((16, 16), Image.Resampling.LANCZOS)).transpose(2, 0, 1)
    assert np.array_equal(small, expected)


def test_folder_is_searched_recursively_and_a_zip_gives_the_same_images(tmp_path):
    folder = write_disc_images(tmp_path / "d", n=12)
    Image.new("RGB", (24, 24), (9, 9, 9)).save(folder / "sub" / "x.jpg", quality=95)
    Image.new("RGB", (24, 24), (9, 9, 9)).save(folder / "y.webp", lossless=True)
    (folder / "notes.txt").write_text("not an image")
    a = load_images(folder, 16)
    assert a.shape == (14, 3, 16, 16) and a.dtype == torch.uint8
    archive = tmp_path / "d.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(folder).as_posix())
    assert torch.equal(load_images(archive, 16), a)
    assert natural_resolution(folder) == 16


def test_unreadable_files_are_skipped_with_one_warning_listing_them(tmp_path):
    folder = write_disc_images(tmp_path, n=10)
    (folder / "broken1.png").write_bytes(b"\x89PNG not really")
    (folder / "sub" / "broken2.jpg").write_bytes(b"garbage")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images = load_images(folder, 16)
    assert len(images) == 10
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "2 unreadable" in message and "broken1.png" in message and "broken2.jpg" in message


def test_missing_empty_and_tiny_data_sets_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_images(tmp_path / "nope", 16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        load_images(tmp_path / "empty", 16)
    tiny = write_disc_images(tmp_path / "tiny", n=3)
    with pytest.raises(DataError, match="only 3 usable"):
        load_images(tiny, 16)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match="not a folder or a zip"):
        load_images(tmp_path / "file.txt", 16)


@pytest.mark.parametrize("problem", ["missing", "empty", "bad_flag"])
def test_cli_bad_data_is_one_line_and_exit_status_2(tmp_path, capsys, problem):
    args = {"missing": ["--data", str(tmp_path / "missing")],
            "empty": ["--data", str(tmp_path), "--out", str(tmp_path / "run")],
            "bad_flag": ["--data", str(tmp_path), "--kimg-scale", "-1"]}[problem]
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ganserve train: error:")
    assert "Traceback" not in err


def test_pyramid_is_box_averaged_per_stage():
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    levels = image_pyramid(x, 3)
    assert [lv.shape[-1] for lv in levels] == [4, 8, 16] and levels[-1] is x
    expected = torch.nn.functional.avg_pool2d(x.float(), 2).round().to(torch.uint8)
    assert torch.equal(levels[1], expected)


def test_batches_are_a_pure_function_of_seed_and_position_and_cover_each_epoch():
    n = 20
    pyramid = [torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()]
    src = BatchSource(pyramid, seed=3, mirror=False)
    seen = torch.cat([src[Phase(k, k * 5, 0, 1.0, 5)][:, 0, 0, 0] for k in range(4)])
    assert sorted(seen.tolist()) == list(range(n))  # one epoch shows every image once
    again = BatchSource(pyramid, seed=3, mirror=False)
    assert torch.equal(again[Phase(2, 10, 0, 1.0, 5)], src[Phase(2, 10, 0, 1.0, 5)])  # no hidden state
    assert not torch.equal(BatchSource(pyramid, 4, False)[Phase(0, 0, 0, 1.0, 20)], src[Phase(0, 0, 0, 1.0, 20)])
    # ranks split the global batch without overlap
    ranks = [BatchSource(pyramid, 3, False, r, 2)[Phase(0, 0, 0, 1.0, 10)] for r in range(2)]
    assert torch.equal(torch.cat(ranks), src[Phase(0, 0, 0, 1.0, 10)])


def test_mirror_flips_about_half_the_images_deterministically():
    x = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4).repeat(64, 1, 1, 1)
    src = BatchSource([x], seed=0, mirror=True)
    batch = src[Phase(0, 0, 0, 1.0, 64)]
    flipped = (batch == x[:1].flip(-1)).flatten(1).all(1)
    assert 16 < int(flipped.sum()) < 48
    assert torch.equal(batch, BatchSource([x], 0, True)[Phase(0, 0, 0, 1.0, 64)])
