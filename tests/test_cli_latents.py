"""`ganserve latents`, `ganserve generate --z/--w` and `ganserve interpolate`, run in-process on tiny models.

The promises checked: the w that `latents` writes, given back to `generate --w`, makes the PNG of `generate --seeds`
byte for byte; the first frame of an interpolation is the first seed's image (and the last frame of an open walk the
last seed's); bad input stops with exit status 2 and one line naming the flag."""

from __future__ import annotations

import importlib.util
import io
import sys

import numpy as np
import pytest
from PIL import Image

from ganserve.cli import main
from ganserve.errors import SpecError
from ganserve.inference.registry import load_backend
from ganserve.inference.walks import interpolation_specs, walk_frames

CPU = ["--backend", "torch", "--device", "cpu"]


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def ok(capsys, *args: str) -> str:
    code, out, err = run(capsys, *args)
    assert code == 0, err
    return out


def fails(capsys, *args: str) -> str:
    """The one-line error of a command that must fail with exit status 2."""
    code, _, err = run(capsys, *args)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0], err
    return lines[0]


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def gif_frames(data: bytes) -> list[np.ndarray]:
    im = Image.open(io.BytesIO(data))
    frames = []
    for i in range(im.n_frames):
        im.seek(i)
        frames.append(np.asarray(im.convert("RGB")))
    return frames


def generate_seeds(capsys, model: str, seeds: str, outdir, *flags: str) -> None:
    ok(capsys, "generate", "--model", model, "--seeds", seeds, "--outdir", outdir, "--workers", "1", "--quiet",
       *CPU, *flags)


# -- latents and generate --z/--w -----------------------------------------------------------------------------
def test_generate_w_from_latents_writes_the_pngs_of_generate_seeds(model_dirs, tmp_path, capsys):
    model = model_dirs["stylegan"]
    style = ["--psi", "0.7", "--mix-seed", "11", "--mix-layers", "coarse", "--truncation-cutoff", "4"]
    out = ok(capsys, "latents", "--model", model, "--seeds", "3,0,7-9", "--out", tmp_path / "l.npz", "--quiet",
             *CPU, *style)
    assert out.strip().splitlines()[-1].endswith("z [5, 32], w [5, 6, 32]")
    with np.load(tmp_path / "l.npz") as f:
        assert sorted(f.files) == ["seeds", "w", "z"]
        seeds, z, w = f["seeds"], f["z"], f["w"]
    assert seeds.dtype == np.int64 and seeds.tolist() == [3, 0, 7, 8, 9]
    assert z.dtype == w.dtype == np.float32 and z.shape == (5, 32) and w.shape == (5, 6, 32)
    assert np.array_equal(z[0], np.random.RandomState(3).randn(32).astype(np.float32))

    generate_seeds(capsys, model, "3,0,7-9", tmp_path / "seeds", *style)
    # batches of 2: the latent files are named by their place in the file, across batches
    ok(capsys, "generate", "--model", model, "--w", tmp_path / "l.npz", "--outdir", tmp_path / "w", "--workers", "1",
       "--batch-size", "2", "--quiet", *CPU)
    ok(capsys, "generate", "--model", model, "--z", tmp_path / "l.npz", "--outdir", tmp_path / "z", "--workers", "1",
       "--quiet", *CPU, *style)
    np.save(tmp_path / "w.npy", w[1:3])  # a bare .npy of ws
    ok(capsys, "generate", "--model", model, "--w", tmp_path / "w.npy", "--outdir", tmp_path / "npy", "--workers",
       "1", "--quiet", *CPU)
    names = [f"latent{i:04d}.png" for i in range(5)]
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == names
    assert sorted(p.name for p in (tmp_path / "z").iterdir()) == names
    for i, seed in enumerate(seeds):
        want = (tmp_path / "seeds" / f"seed{seed:04d}.png").read_bytes()
        assert (tmp_path / "w" / names[i]).read_bytes() == want, seed
        assert (tmp_path / "z" / names[i]).read_bytes() == want, seed
    assert (tmp_path / "npy" / "latent0001.png").read_bytes() == (tmp_path / "seeds" / "seed0007.png").read_bytes()


def test_latent_files_in_worker_processes_are_named_by_their_place_in_the_file(model_dirs, tmp_path, capsys):
    """--workers 2: each process takes batches of latents; the files are named by the place in the file all the
    same, with the pixels of one process."""
    model = model_dirs["stylegan"]
    z = np.random.RandomState(0).randn(5, 32).astype(np.float32)
    np.save(tmp_path / "z.npy", z)
    for workers in ("1", "2"):
        ok(capsys, "generate", "--model", model, "--z", tmp_path / "z.npy", "--outdir", tmp_path / workers,
           "--workers", workers, "--batch-size", "2", "--quiet", *CPU)
    names = [f"latent{i:04d}.png" for i in range(5)]
    assert sorted(p.name for p in (tmp_path / "2").iterdir()) == names
    for name in names:
        assert (tmp_path / "1" / name).read_bytes() == (tmp_path / "2" / name).read_bytes(), name
    # row 3 of the file is the image of its own one-row file
    np.save(tmp_path / "z3.npy", z[3])  # one [z_dim] vector
    ok(capsys, "generate", "--model", model, "--z", tmp_path / "z3.npy", "--outdir", tmp_path / "one", "--workers",
       "1", "--quiet", *CPU)
    assert (tmp_path / "one" / "latent0000.png").read_bytes() == (tmp_path / "1" / "latent0003.png").read_bytes()


def test_progan_latents_hold_z_only_and_generate_z_gives_the_seeds_images(model_dirs, tmp_path, capsys):
    model = model_dirs["progan"]
    out = ok(capsys, "latents", "--model", model, "--seeds", "0-2", "--out", tmp_path / "p.npz", *CPU)
    assert "no w: progan has no w space" in out
    with np.load(tmp_path / "p.npz") as f:
        assert sorted(f.files) == ["seeds", "z"]
    generate_seeds(capsys, model, "0-2", tmp_path / "seeds", "--psi", "0.5")
    ok(capsys, "generate", "--model", model, "--z", tmp_path / "p.npz", "--psi", "0.5", "--outdir", tmp_path / "z",
       "--workers", "1", "--quiet", *CPU)
    for i in range(3):
        assert (tmp_path / "z" / f"latent{i:04d}.png").read_bytes() == \
            (tmp_path / "seeds" / f"seed{i:04d}.png").read_bytes()
    assert "--w" in fails(capsys, "generate", "--model", model, "--w", tmp_path / "p.npz", "--outdir", tmp_path / "x",
                          *CPU)
    np.save(tmp_path / "w.npy", np.zeros((2, 1, 32), np.float32))
    line = fails(capsys, "generate", "--model", model, "--w", tmp_path / "w.npy", "--outdir", tmp_path / "x", *CPU)
    assert "--w" in line and "StyleGAN" in line
    line = fails(capsys, "latents", "--model", model, "--seeds", "1", "--psi", "0.5", "--out", tmp_path / "q.npz",
                 *CPU)
    assert "--psi" in line and "no w space" in line
    assert "mix" in fails(capsys, "latents", "--model", model, "--seeds", "1", "--mix-seed", "2", "--out",
                          tmp_path / "q.npz", *CPU)
    assert not (tmp_path / "q.npz").exists()


@pytest.mark.parametrize("make, flags, message", [
    (None, [], "give exactly one of --seeds, --z FILE and --w FILE"),
    ("z.npy", ["--seeds", "1"], "not --seeds and --z"),
    ("bad.txt", [], "--z"),
    ("missing.npy", [], "no such file"),
    ("z3.npy", [], "--z"),  # [2, 3]: not z_dim wide
    ("znan.npy", [], "finite"),
    ("zstr.npy", [], "array of numbers"),
    ("garbage.npy", [], "not a readable"),
    ("onlyz.npz", ["--w"], "holds no array named 'w' (it holds: z)"),
    ("w.npy", ["--w", "--psi", "0.5"], "--psi does not apply to --w"),
    ("w.npy", ["--w", "--mix-seed", "3"], "--mix-seed does not apply to --w"),
    ("w.npy", ["--w", "--noise", "random"], "noise"),
    ("z.npy", ["--noise", "random"], "noise"),
    ("wshape.npy", ["--w"], "--w"),  # [2, 5, 32]: not num_ws layers
])
def test_generate_latent_file_errors_name_the_flag(model_dirs, tmp_path, capsys, make, flags, message):
    files = {
        "z.npy": np.zeros((2, 32), np.float32), "z3.npy": np.zeros((2, 3)), "znan.npy": np.full((1, 32), np.nan),
        "zstr.npy": np.array([["a"] * 32]), "w.npy": np.zeros((2, 32), np.float32),
        "wshape.npy": np.zeros((2, 5, 32), np.float32),
    }
    args = ["generate", "--model", model_dirs["stylegan"], "--outdir", tmp_path / "out", *CPU]
    if make is not None:
        path = tmp_path / make
        if make in files:
            np.save(path, files[make])
        elif make == "onlyz.npz":
            np.savez(path, z=np.zeros((1, 32), np.float32))
        elif make != "missing.npy":
            path.write_bytes(b"not an array")
        flag = "--w" if flags[:1] == ["--w"] else "--z"
        args += [flag, path, *[f for f in flags if f != "--w"]]
    else:
        args += flags
    assert message in fails(capsys, *args)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_latents_refuses_other_files_and_offers_only_the_flags_that_change_latents(model_dirs, tmp_path, capsys):
    model = model_dirs["stylegan"]
    assert ".npz" in fails(capsys, "latents", "--model", model, "--seeds", "1", "--out", tmp_path / "l.npy", *CPU)
    assert "runs backwards" in fails(capsys, "latents", "--model", model, "--seeds", "3-1", "--out",
                                     tmp_path / "l.npz", *CPU)
    for flag in ("--noise=none", "--rotate=1", "--format=png"):
        with pytest.raises(SystemExit) as e:
            main(["latents", "--model", model, "--seeds", "1", "--out", str(tmp_path / "l.npz"), flag])
        assert e.value.code == 2
        assert "unrecognized arguments" in capsys.readouterr().err
    assert not (tmp_path / "l.npz").exists()


# -- interpolate ------------------------------------------------------------------------------------------------
def test_stylegan_walk_in_w_starts_and_ends_at_the_seeds_images(model_dirs, tmp_path, capsys):
    model = model_dirs["stylegan"]
    style = ["--psi", "0.6", "--mix-seed", "4", "--noise", "none"]
    generate_seeds(capsys, model, "1,5,9", tmp_path / "seeds", *style)
    seed_png = {s: (tmp_path / "seeds" / f"seed{s:04d}.png").read_bytes() for s in (1, 5, 9)}

    # an open walk to a folder: frames 0, 3 and 6 are the seeds' images, byte for byte
    out = ok(capsys, "interpolate", "--model", model, "--seeds", "1,5,9", "--steps", "4", "--no-loop",
             "--out", tmp_path / "frames", "--batch-size", "3", *CPU, *style)
    assert "7 frames (an open walk through 3 seeds in w space" in out
    frames = sorted((tmp_path / "frames").iterdir())
    assert [p.name for p in frames] == [f"frame{i:04d}.png" for i in range(7)]
    assert [frames[i].read_bytes() for i in (0, 3, 6)] == [seed_png[s] for s in (1, 5, 9)]
    assert frames[1].read_bytes() not in seed_png.values()

    # the default loop, as a GIF: 3 legs of 3 frames, back towards seed 1; the same frames as the folder
    ok(capsys, "interpolate", "--model", model, "--seeds", "1,5,9", "--steps", "4", "--fps", "10",
       "--out", tmp_path / "walk.gif", "--quiet", *CPU, *style)
    gif = Image.open(tmp_path / "walk.gif")
    assert gif.info["loop"] == 0 and gif.info["duration"] == 100
    decoded = gif_frames((tmp_path / "walk.gif").read_bytes())
    assert len(decoded) == 9
    for i in range(7):  # a 16x16 frame has at most 256 colours: its GIF palette holds them exactly
        assert np.array_equal(decoded[i], pixels(frames[i])), i


def test_stylegan_walk_in_z_and_webp(model_dirs, tmp_path, capsys):
    model = model_dirs["stylegan"]
    generate_seeds(capsys, model, "2,3", tmp_path / "seeds", "--psi", "0.8")
    ok(capsys, "interpolate", "--model", model, "--seeds", "2,3", "--steps", "5", "--space", "z", "--no-loop",
       "--psi", "0.8", "--out", tmp_path / "z", "--quiet", *CPU)
    assert (tmp_path / "z" / "frame0000.png").read_bytes() == (tmp_path / "seeds" / "seed0002.png").read_bytes()
    assert (tmp_path / "z" / "frame0004.png").read_bytes() == (tmp_path / "seeds" / "seed0003.png").read_bytes()
    ok(capsys, "interpolate", "--model", model, "--seeds", "2,3", "--steps", "5", "--space", "z", "--psi", "0.8",
       "--out", tmp_path / "z.webp", "--quiet", *CPU)
    webp = Image.open(tmp_path / "z.webp")
    assert webp.format == "WEBP" and webp.n_frames == 8 and webp.size == (16, 16)


def test_progan_walks_z_and_refuses_w(model_dirs, tmp_path, capsys):
    model = model_dirs["progan"]
    generate_seeds(capsys, model, "4,6", tmp_path / "seeds", "--psi", "0.9")
    out = ok(capsys, "interpolate", "--model", model, "--seeds", "4,6", "--steps", "3", "--no-loop",
             "--psi", "0.9", "--out", tmp_path / "walk.gif", *CPU)
    assert "in z space" in out
    decoded = gif_frames((tmp_path / "walk.gif").read_bytes())
    assert len(decoded) == 3
    assert np.array_equal(decoded[0], pixels(tmp_path / "seeds" / "seed0004.png"))
    assert np.array_equal(decoded[-1], pixels(tmp_path / "seeds" / "seed0006.png"))
    line = fails(capsys, "interpolate", "--model", model, "--seeds", "4,6", "--space", "w", "--out",
                 tmp_path / "w.gif", *CPU)
    assert "--space" in line and "StyleGAN" in line
    assert "mix" in fails(capsys, "interpolate", "--model", model, "--seeds", "4,6", "--mix-seed", "1", "--out",
                          tmp_path / "w.gif", *CPU)
    assert not (tmp_path / "w.gif").exists()


def test_stylegan3_frames_turn_with_rotate_and_others_refuse_it(tmp_path, capsys):
    """rotate/translate apply to every frame of a StyleGAN3 walk; no other architecture needs or takes them."""
    sg3 = tmp_path / "sg3"
    ok(capsys, "init", "--arch", "stylegan3", "--config", "t", "--resolution", "16", "--z-dim", "16", "--w-dim", "16",
       "--channel-base", "256", "--channel-max", "32", "--mapping-layers", "2", "--out", sg3)
    flags = ["--rotate", "15", "--translate=-0.1,0"]
    generate_seeds(capsys, str(sg3), "1,2", tmp_path / "seeds", *flags)
    ok(capsys, "interpolate", "--model", sg3, "--seeds", "1,2", "--steps", "3", "--no-loop", "--out",
       tmp_path / "frames", "--quiet", *CPU, *flags)
    assert (tmp_path / "frames" / "frame0000.png").read_bytes() == (tmp_path / "seeds" / "seed0001.png").read_bytes()
    assert (tmp_path / "frames" / "frame0002.png").read_bytes() == (tmp_path / "seeds" / "seed0002.png").read_bytes()


@pytest.mark.parametrize("flags, out, message", [
    (["--seeds", "5"], "walk.gif", "--seeds: an interpolation walks between at least 2 seeds, got 1"),
    (["--seeds", "1,2", "--steps", "1"], "walk.gif", "--steps"),
    (["--seeds", "1,2", "--fps", "0"], "walk.gif", "--fps"),
    (["--seeds", "1,2", "--fps", "nan"], "walk.gif", "--fps"),
    (["--seeds", "1,2", "--rotate", "10"], "walk.gif", "rotate needs a StyleGAN3 model"),
    (["--seeds", "1,2", "--translate", "0.1,0"], "walk.gif", "translate needs a StyleGAN3 model"),
    (["--seeds", "1,2", "--batch-size", "0"], "walk.gif", "--batch-size"),
    (["--seeds", "1,2", "--psi", "5"], "walk.gif", "psi"),
    (["--seeds", "1,2"], "walk.png", ".gif, .webp, .mp4"),
    (["--seeds", "1,2"], "afile", "is a file"),
])
def test_interpolate_errors_are_one_line(model_dirs, tmp_path, capsys, flags, out, message):
    if out == "afile":
        (tmp_path / out).write_bytes(b"kept")
    line = fails(capsys, "interpolate", "--model", model_dirs["stylegan"], "--out", tmp_path / out, *CPU, *flags)
    assert message in line
    assert sorted(p.name for p in tmp_path.iterdir()) == (["afile"] if out == "afile" else [])


def test_interpolate_offers_noise_const_and_none_only(model_dirs, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["interpolate", "--model", model_dirs["stylegan"], "--seeds", "1,2", "--noise", "random", "--out",
              str(tmp_path / "walk.gif")])
    assert e.value.code == 2 and "invalid choice: 'random'" in capsys.readouterr().err
    ok(capsys, "interpolate", "--model", model_dirs["stylegan"], "--seeds", "1,2", "--steps", "2", "--noise", "none",
       "--out", tmp_path / "walk.gif", "--quiet", *CPU)
    assert Image.open(tmp_path / "walk.gif").n_frames == 2


def test_interpolation_specs_is_a_library_function(model_dirs):
    backend = load_backend(model_dirs["stylegan"], "torch", "cpu")
    specs = interpolation_specs(backend, [1, 2, 3], 5, psi=0.5, noise="none")
    assert len(specs) == walk_frames(3, 5, loop=True) == 12
    assert all(s.seed is None and s.w is not None and s.noise == "none" for s in specs)
    z_specs = interpolation_specs(backend, [1, 2], 3, space="z", loop=False, psi=0.5)
    assert len(z_specs) == 3 and all(s.z is not None and s.psi == 0.5 for s in z_specs)
    with pytest.raises(SpecError) as e:
        interpolation_specs(backend, [1, 2], 3, noise="random")
    assert e.value.field == "noise"
    with pytest.raises(SpecError) as e:
        interpolation_specs(backend, [1], 3)
    assert e.value.field == "seeds"


# -- mp4 --------------------------------------------------------------------------------------------------------
def test_mp4_without_the_video_extra_names_it(model_dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import fails as when it is not installed
    line = fails(capsys, "interpolate", "--model", model_dirs["stylegan"], "--seeds", "1,2", "--out",
                 tmp_path / "walk.mp4", *CPU)
    assert "pip install 'ganserve[video]'" in line
    assert not (tmp_path / "walk.mp4").exists()


@pytest.mark.skipif(importlib.util.find_spec("imageio_ffmpeg") is None or importlib.util.find_spec("imageio") is None,
                    reason="the video extra (imageio, imageio-ffmpeg) is not installed")
def test_mp4_holds_every_frame(model_dirs, tmp_path, capsys):
    import imageio.v2 as imageio

    ok(capsys, "interpolate", "--model", model_dirs["progan"], "--seeds", "1,2,3", "--steps", "4", "--fps", "10",
       "--out", tmp_path / "walk.mp4", "--quiet", *CPU)
    reader = imageio.get_reader(tmp_path / "walk.mp4", format="FFMPEG")
    try:
        frames = [f for f in reader]
        assert reader.get_meta_data()["fps"] == 10
    finally:
        reader.close()
    assert len(frames) == 9 and frames[0].shape == (16, 16, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["walk.mp4"]  # no temporary file left beside it


def test_class_conditional_stylegan2_walks_and_latents_keep_the_class(tmp_path, capsys):
    """The class decides the ws: it goes into the ws of `latents` and of a w walk, and is refused with --w."""
    model = tmp_path / "cond"
    ok(capsys, "init", "--arch", "stylegan2", "--resolution", "16", "--z-dim", "16", "--w-dim", "16",
       "--channel-base", "256", "--channel-max", "32", "--mapping-layers", "2", "--c-dim", "3", "--out", model)
    generate_seeds(capsys, str(model), "1,2", tmp_path / "seeds", "--class", "2", "--psi", "0.8")
    ok(capsys, "interpolate", "--model", model, "--seeds", "1,2", "--steps", "3", "--no-loop", "--class", "2",
       "--psi", "0.8", "--out", tmp_path / "frames", "--quiet", *CPU)
    ok(capsys, "latents", "--model", model, "--seeds", "1,2", "--class", "2", "--psi", "0.8", "--out",
       tmp_path / "l.npz", "--quiet", *CPU)
    ok(capsys, "generate", "--model", model, "--w", tmp_path / "l.npz", "--outdir", tmp_path / "w", "--workers", "1",
       "--quiet", *CPU)
    for seed, frame, latent in ((1, 0, 0), (2, 2, 1)):
        want = (tmp_path / "seeds" / f"seed{seed:04d}.png").read_bytes()
        assert (tmp_path / "frames" / f"frame{frame:04d}.png").read_bytes() == want
        assert (tmp_path / "w" / f"latent{latent:04d}.png").read_bytes() == want
    assert "class" in fails(capsys, "interpolate", "--model", model, "--seeds", "1,2", "--out", tmp_path / "x.gif",
                            *CPU)
    assert "--class does not apply to --w" in fails(capsys, "generate", "--model", model, "--w", tmp_path / "l.npz",
                                                    "--class", "1", "--outdir", tmp_path / "x", *CPU)
