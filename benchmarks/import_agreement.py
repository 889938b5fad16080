"""Agreement of `ganserve import` with the reference implementations' own generation (run outside CI, on the CPU).

Builds a small generator with the reference code itself (NVlabs stylegan2-ada-pytorch, NVlabs stylegan3's
networks_stylegan2, or rosinality stylegan2-pytorch, checked out by you somewhere outside this repository), saves
it as that code's training loop does, imports it with `ganserve import` in a fresh process, and compares images for
a few seeds with the reference's generation (NVlabs: G(z, c, truncation_psi, noise_mode='const'); rosinality:
g_ema([z], truncation, truncation_latent, randomize_noise=False)). Nothing of the reference is kept.

    git clone https://github.com/NVlabs/stylegan2-ada-pytorch /tmp/nv   # and NVlabs/stylegan3, rosinality/...
    python benchmarks/import_agreement.py ada /tmp/nv --resolution 32 --conv-clamp 256
    python benchmarks/import_agreement.py sg3 /tmp/sg3 --resolution 64 --num-fp16-res 4   # pkg_resources import
                                                      # in torch_utils/ops patched to packaging.version
    python benchmarks/import_agreement.py rosinality /tmp/ros --resolution 32   # op/ CUDA loads patched out
    python benchmarks/import_agreement.py sg3-t /tmp/sg3 --resolution 32   # stylegan3's networks_stylegan3, config T
    python benchmarks/import_agreement.py sg3-r /tmp/sg3 --resolution 32   # config R (1x1 convs, radial filters)
    python benchmarks/import_agreement.py sg3-t /tmp/sg3 --rotate 30 --translate 0.1,-0.2   # gen_images.py's
                                                      # --rotate/--translate against ganserve's per-image transform

Prints one line per psi (and class): max |float difference| and the fraction of equal uint8 values.
"""

from __future__ import annotations

import argparse
import copy
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent


def _trained_looking(G: torch.nn.Module, noise: str, bias: str, rgb: str) -> None:
    """Non-zero noise strengths and biases, toRGB weights scaled so that images are mostly inside [-1, 1]."""
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith(noise):
                p.normal_(0, 0.5)
            elif name.endswith(bias) and "affine" not in name and "modulation" not in name and "style" not in name:
                p.normal_(0, 0.2)
            if rgb in name and name.endswith("weight"):
                p.mul_(0.15)


def build_nvlabs(args, workdir: Path):
    sys.path.insert(0, str(args.source))
    import dnnlib
    from torch_utils.ops import conv2d_gradfix

    conv2d_gradfix.enabled = False
    if args.kind in ("sg3-t", "sg3-r"):
        from training.networks_stylegan2 import Discriminator
        from training.networks_stylegan3 import Generator

        syn = dict(channel_base=args.channel_base, channel_max=args.channel_max, num_fp16_res=args.num_fp16_res,
                   conv_clamp=args.conv_clamp, magnitude_ema_beta=0.999)
        if args.kind == "sg3-r":  # train.py's --cfg=stylegan3-r
            syn.update(conv_kernel=1, channel_base=args.channel_base * 2, channel_max=args.channel_max * 2,
                       use_radial_filters=True)
    elif args.kind == "ada":
        from training.networks import Discriminator, Generator

        syn = dict(synthesis_kwargs=dnnlib.EasyDict(channel_base=args.channel_base, channel_max=args.channel_max,
                                                    num_fp16_res=args.num_fp16_res, conv_clamp=args.conv_clamp,
                                                    architecture=args.architecture))
    else:
        from training.networks_stylegan2 import Discriminator, Generator

        syn = dict(channel_base=args.channel_base, channel_max=args.channel_max, num_fp16_res=args.num_fp16_res,
                   conv_clamp=args.conv_clamp, architecture=args.architecture)
    torch.manual_seed(0)
    G = Generator(z_dim=args.z_dim, c_dim=args.c_dim, w_dim=args.z_dim, img_resolution=args.resolution,
                  img_channels=3, mapping_kwargs=dnnlib.EasyDict(num_layers=2), **syn)
    G = G.eval().requires_grad_(False)
    _trained_looking(G, "noise_strength", "bias", "torgb" if args.kind in ("ada", "sg3") else "no such layer")
    if args.kind.startswith("sg3-"):
        with torch.no_grad():
            for name, buf in G.named_buffers():
                if name.endswith("magnitude_ema"):  # as after training: input magnitudes are not 1
                    buf.fill_(0.3 + torch.rand([]).item())
            # the toRGB layer (e.g. L14_32_3) scaled so that images have a standard deviation of about 0.5
            torgb = getattr(G.synthesis, G.synthesis.layer_names[-1])
            img = G(torch.randn(16, args.z_dim), torch.eye(max(args.c_dim, 1))[:1, : args.c_dim].repeat(16, 1))
            torgb.weight.mul_(0.5 / img.std())
    with torch.no_grad():
        z = torch.randn(1024, args.z_dim)
        c = torch.nn.functional.one_hot(torch.randint(max(args.c_dim, 1), (1024,)), max(args.c_dim, 1)).float()
        G.mapping.w_avg.copy_(G.mapping(z, c[:, : args.c_dim])[:, 0].mean(0))
    D = Discriminator(c_dim=args.c_dim, img_resolution=args.resolution, img_channels=3,
                      channel_base=args.channel_base, channel_max=args.channel_max)
    path = workdir / "network-snapshot-000000.pkl"
    data = dict(G=G, D=D, G_ema=copy.deepcopy(G), augment_pipe=None,
                training_set_kwargs=dnnlib.EasyDict(path="dataset.zip", resolution=args.resolution,
                                                    use_labels=args.c_dim > 0))
    with open(path, "wb") as f:
        pickle.dump(data, f)

    def reference(z, c, psi):
        return G(z, c, truncation_psi=psi, noise_mode="const")

    reference.G = G  # its input transform is set for --rotate/--translate

    return path, reference, args.c_dim


def build_rosinality(args, workdir: Path):
    sys.path.insert(0, str(args.source))
    from model import Generator

    torch.manual_seed(0)
    g = Generator(args.resolution, args.z_dim, 2, channel_multiplier=1).eval().requires_grad_(False)
    _trained_looking(g, "noise.weight", "activate.bias", "to_rgb")
    with torch.no_grad():
        latent_avg = g.mean_latent(2048)[0]
    path = workdir / "stylegan2-converted.pt"
    torch.save({"g_ema": g.state_dict(), "latent_avg": latent_avg}, path)

    def reference(z, c, psi):
        return g([z], truncation=psi, truncation_latent=latent_avg, randomize_noise=False)[0]

    return path, reference, 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=("ada", "sg3", "sg3-t", "sg3-r", "rosinality"))
    p.add_argument("source", type=Path, help="checkout of the reference code (outside this repository)")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--z-dim", type=int, default=32)
    p.add_argument("--c-dim", type=int, default=0)
    p.add_argument("--channel-base", type=int, default=2048)
    p.add_argument("--channel-max", type=int, default=64)
    p.add_argument("--conv-clamp", type=float, default=256)
    p.add_argument("--num-fp16-res", type=int, default=0)
    p.add_argument("--architecture", default="skip")
    p.add_argument("--seeds", default="0-7")
    p.add_argument("--rotate", type=float, default=0.0, help="StyleGAN3: degrees, as gen_images.py --rotate")
    p.add_argument("--translate", default="0,0", help="StyleGAN3: x,y, as gen_images.py --translate")
    args = p.parse_args()
    args.translate = tuple(float(v) for v in args.translate.split(","))
    moved = args.rotate != 0 or args.translate != (0.0, 0.0)
    if moved and not args.kind.startswith("sg3-"):
        sys.exit("--rotate/--translate need a StyleGAN3 kind (sg3-t, sg3-r)")
    args.conv_clamp = None if args.conv_clamp <= 0 or args.kind == "rosinality" else args.conv_clamp
    a, b = (int(s) for s in args.seeds.split("-"))
    seeds = list(range(a, b + 1))
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        build = build_rosinality if args.kind == "rosinality" else build_nvlabs
        path, reference, c_dim = build(args, workdir)
        out = workdir / "imported"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        r = subprocess.run([sys.executable, "-m", "ganserve.cli", "import", str(path), "--out", str(out)],
                           env=env, cwd=REPO, capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"ganserve import failed: {r.stderr.strip()}")
        sys.path.insert(0, str(REPO))
        from ganserve.imaging import to_uint8
        from ganserve.models.latents import image_transform, make_transform, seeds_to_z, truncation
        from ganserve.models.weights import load_model

        moving = {}
        if moved:  # the reference as gen_images.py moves it: the model's input transform; ganserve: per image
            with torch.no_grad():
                reference.G.synthesis.input.transform.copy_(
                    torch.from_numpy(np.linalg.inv(make_transform(args.translate, args.rotate))))
            rows = np.stack([image_transform(args.rotate, args.translate)] * len(seeds))
            moving = {"transform": torch.from_numpy(rows)}

        H = load_model(out)
        z = torch.from_numpy(np.stack([np.random.RandomState(s).randn(args.z_dim) for s in seeds])).float()
        assert torch.equal(z, torch.from_numpy(seeds_to_z(seeds, args.z_dim)))
        for psi in (1.0, 0.7):
            for cls in range(c_dim) if c_dim else [None]:
                c = torch.zeros(len(seeds), c_dim)
                if cls is not None:
                    c[:, cls] = 1
                with torch.no_grad():
                    ref = reference(z, c, psi).float()
                    got = H.synthesis(truncation(H.mapping(z, c if c_dim else None), H.w_avg, psi), **moving)
                nv8 = lambda x: (x * 127.5 + 128).clamp(0, 255).to(torch.uint8)  # noqa: E731 - NVlabs' generate.py
                arch = "" if args.kind.startswith("sg3-") else f" {args.architecture}"
                label = f"{args.kind} {args.resolution}x{args.resolution}{arch} c_dim={c_dim} " \
                        f"fp16_res={args.num_fp16_res} clamp={args.conv_clamp} psi={psi}" + \
                        (f" class={cls}" if cls is not None else "") + \
                        (f" rotate={args.rotate:g} translate={args.translate}" if moved else "")
                print(f"{label}: max|diff| {(ref - got).abs().max().item():.2e}  uint8 equal "
                      f"{(nv8(ref) == nv8(got)).float().mean().item():.4%} (generate.py rounding), "
                      f"{(to_uint8(ref) == to_uint8(got)).float().mean().item():.4%} (ganserve to_uint8), "
                      f"img std {ref.std().item():.2f}")


if __name__ == "__main__":
    main()
