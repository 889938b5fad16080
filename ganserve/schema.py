"""The per-image request parameters, each defined once, and the checks of their values that need no model.

Owns PARAMS: name, HTTP name, type, default, bounds, description, command-line flag and help of every parameter of
an image request. The HTTP models (ganserve.serve.params), the flags of `ganserve generate` and `ganserve sample`
(add_flags) and the client (http_params) are built from it; make_spec (ganserve.inference.sampling) checks a value
against a model after the checks here. Torch-free and pydantic-free: the client imports it.

A new parameter is a Param in PARAMS, a keyword of make_spec (with the SampleSpec field and batch input that carry
it) and a keyword of the client's generate_bytes; the HTTP models and the CLI flags follow from the table, and
tests/test_schema.py checks that make_spec and the client agree with it.
"""

from __future__ import annotations

import argparse
import math
import numbers
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ganserve.errors import SpecError

MAX_SEED = 2**32 - 1
PSI_MIN, PSI_MAX = -1.0, 2.0
ROTATE_MAX = 360.0  # degrees, either way
TRANSLATE_MAX = 100.0  # image widths/heights, either way
MAX_CUTOFF = 64  # truncation_cutoff over HTTP, before it is checked against the model's num_ws
LATENT_MAX = 1000.0  # the largest magnitude of a z or w value a request may give
LATENT_SPACES = ("w", "z")  # what an interpolation walks through: w linearly, z along great circles
ANIMATION_FORMATS = ("gif", "webp")  # one animated file of an interpolation (its frames are otherwise multipart)
FPS_MAX = 60
NOISE_MODES = ("const", "random", "none")  # none: no noise added (zero noise maps)
IMAGE_FORMATS = ("png", "jpeg", "webp")
LAYER_PRESETS = ("coarse", "middle", "fine", "all")
DEFAULT_MIX_LAYERS = "coarse"
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
RANGE_PATTERN = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$", re.ASCII)  # ASCII: \s and \d as int() reads them
INT_PATTERN = re.compile(r"^\s*(\d+)\s*$", re.ASCII)


@dataclass(frozen=True)
class Param:
    """One request parameter. `name` is its Python keyword (make_spec, the client, the CLI's dest); `http` its name
    in a query string or JSON body when that differs (`class`, a Python keyword)."""

    name: str
    type: type  # int, float or str: its type in a query string and on the command line
    description: str  # its meaning, for the OpenAPI schema
    default: object = None  # None: not given (the model or the server decides)
    ge: float | None = None
    le: float | None = None
    max_length: int | None = None  # of a string value
    pattern: str | None = None  # of a string value
    choices: tuple[str, ...] | None = None
    http: str | None = None
    json_list: tuple[type, int, int] | None = None  # a JSON body may give it as a list: item type, min, max length
    json_description: str | None = None  # its description in a JSON body, when the list form needs a word
    cli_help: str | None = None  # the help of its flag in `generate` and `sample`; None: no such shared flag
    metavar: str | None = None
    required: bool = False

    @property
    def key(self) -> str:
        """Its name over HTTP."""
        return self.http or self.name

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")


PARAMS: tuple[Param, ...] = (  # in the order of make_spec's keywords, then model and format
    Param("psi", float, "truncation psi (1 = none)", default=1.0, ge=PSI_MIN, le=PSI_MAX,
          cli_help="truncation psi in [-1, 2] (1 = none)"),
    Param("mix_seed", int, "seed whose styles replace mix_layers", ge=0, le=MAX_SEED,
          cli_help="seed whose styles replace mix-layers (StyleGAN)"),
    Param("mix_layers", str, "coarse, middle, fine, all, a range 'a-b' or a list '0,1,4-5'", max_length=256,
          json_list=(int, 1, 64),
          json_description="coarse, middle, fine, all, 'a-b', '0,1,4-5' or a list of ws indices",
          cli_help="coarse, middle, fine, all, a-b or a list (default coarse)"),
    Param("noise", str, "const: the saved noise maps; random: seeded by the image's seed; none: no noise",
          default="const", choices=NOISE_MODES,
          cli_help="const (the saved noise maps), random (seeded by the image's seed) or none (StyleGAN)"),
    Param("truncation_cutoff", int, "truncate only ws layers below this index", ge=0, le=MAX_CUTOFF,
          cli_help="truncate only ws layers below this index (default all)"),
    Param("class_idx", int, "class label in [0, c_dim) of a class-conditional model (required for those; see c_dim "
          "in /models), not allowed for others", ge=0, http="class",
          cli_help="class label in [0, c_dim) of a class-conditional model (required for those)"),
    Param("rotate", float, "StyleGAN3 only: rotate the image by this many degrees (counter-clockwise)",
          ge=-ROTATE_MAX, le=ROTATE_MAX, cli_help="StyleGAN3: rotate the images by this many degrees"),
    Param("translate", str, "StyleGAN3 only: shift the image by 'x,y' image sizes, e.g. '0.25,0'", max_length=64,
          json_list=(float, 2, 2), json_description="StyleGAN3 only: shift the image by [x, y] (or 'x,y') image sizes",
          cli_help="StyleGAN3: shift the images by X,Y image sizes, e.g. 0.25,0", metavar="X,Y"),
    Param("model", str, "served model name (default: the first)", pattern=MODEL_NAME_PATTERN),
    Param("format", str, "image file format", default="png", choices=IMAGE_FORMATS, cli_help="image file format"),
)
SEED = Param("seed", int, "integer in [0, 2**32 - 1]", ge=0, le=MAX_SEED, required=True)  # GET /generate: one image
SEEDS = Param("seeds", str, "a list of seeds, one seed, or a string like '0-99' or '1,2,5-10'", max_length=1000,
              cli_help="e.g. 42, 0-15 or 1,2,5-10")  # POST /generate and the CLI: many images
Z = Param("z", float, "in place of seeds: a list of z vectors (z_dim numbers each); mapping, truncation and mixing "
          "apply as for a seed's z")
W = Param("w", float, "in place of seeds: a list of ws, each num_ws lists of w_dim numbers (what GET /latents "
          "returns) or one w_dim list used for every layer; used as given (no psi, mixing or class). StyleGAN only")
TO_SEED = Param("to_seed", int, "the seed the interpolation ends at", ge=0, le=MAX_SEED, required=True)
STEPS = Param("steps", int, "frames, both ends included", ge=2, required=True)
SPACE = Param("space", str, "w: straight steps between the ws (StyleGAN; the default there); z: steps along the "
              "great circle between the zs (the default and only choice for ProGAN)", choices=LATENT_SPACES)
FPS = Param("fps", float, "frames per second of an animated format", default=24.0, ge=1, le=FPS_MAX)
SPEC_PARAMS = tuple(p for p in PARAMS if p.name not in ("model", "format"))  # make_spec's keywords after the seed
LATENT_PARAMS = ("psi", "mix_seed", "mix_layers", "truncation_cutoff", "class_idx")  # what decides a seed's ws
BY_NAME = {p.name: p for p in (SEED, *PARAMS)}


# -- the command line and the client ----------------------------------------------------------------------------
def add_flags(parser: argparse.ArgumentParser, names: Iterable[str] | None = None) -> None:
    """The flags of every parameter with a `cli_help` (the image parameters and --format), as `generate` and
    `sample` take them; with `names`, only those parameters' flags (a command that offers some of them). Left out, a
    parameter is None (--format: png): make_spec or the server picks its default."""
    wanted = None if names is None else set(names)
    for p in PARAMS:
        if p.cli_help is not None and (wanted is None or p.name in wanted):
            default = p.default if p.name == "format" else None  # the extension of the files both commands write
            parser.add_argument(p.flag, dest=p.name, type=p.type, choices=p.choices, default=default,
                                metavar=p.metavar, help=p.cli_help)


def spec_kwargs(args: argparse.Namespace) -> dict[str, object]:
    """The image parameters given on the command line, as make_spec's keywords (a flag the command does not offer
    counts as not given)."""
    return {p.name: getattr(args, p.name) for p in SPEC_PARAMS if getattr(args, p.name, None) is not None}


def http_params(**params: object) -> dict[str, object]:
    """Request parameters by their HTTP names, leaving out those not given (the server's defaults apply). A list
    value (a translate pair, mix_layers indices) is sent as the string "a,b" that the query string also takes."""
    out = {}
    for name, value in params.items():
        param = BY_NAME.get(name)
        if value is None:
            continue
        if param is None:  # not a parameter: sent as it is, for the server to name in its 422
            out[name] = value
            continue
        if param.json_list is not None and not isinstance(value, str):
            value = ",".join(repr(param.json_list[0](v)) for v in value)
        out[param.key] = value
    return out


# -- value checks ------------------------------------------------------------------------------------------------
def _is_int(value: object) -> bool:
    """int or a numpy integer, not bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_seed(seed: object, name: str = "seed") -> int:
    """Return `seed` as an int if it is an integer in [0, 2**32 - 1], else raise SpecError."""
    if not _is_int(seed):
        if isinstance(seed, str) and INT_PATTERN.match(seed):
            seed = int(seed)
        else:
            raise SpecError(f"{name} must be an integer in [0, {MAX_SEED}], got {seed!r}", field=name)
    seed = int(seed)
    if not 0 <= seed <= MAX_SEED:
        raise SpecError(f"{name} must be in [0, {MAX_SEED}], got {seed}", field=name)
    return seed


def image_filename(seed: int, fmt: str) -> str:
    """The file `ganserve generate` and `ganserve sample` write an image to: seed0042.png."""
    return f"seed{seed:04d}.{fmt}"


def latent_filename(index: int, fmt: str) -> str:
    """The file `ganserve generate --z/--w` writes the image of a file's latent number `index` to: latent0000.png."""
    return f"latent{index:04d}.{fmt}"


def parse_seeds(spec: str | int | Iterable[int], max_count: int | None = None) -> list[int]:
    """Seeds from `7`, `"0-99"`, `"1,2,5-10"` or a list of ints; ranges are inclusive. Order is kept."""
    if isinstance(spec, bool):
        raise SpecError(f"seeds must be an integer, a list or a string like '0-99', got {spec!r}", field="seeds")
    if _is_int(spec):
        items: list[int] = [check_seed(spec)]
    elif isinstance(spec, str):
        if not spec.strip():
            raise SpecError("seed list is empty", field="seeds")
        items = []
        for part in spec.split(","):
            if m := RANGE_PATTERN.match(part):
                a, b = check_seed(int(m.group(1))), check_seed(int(m.group(2)))
                if b < a:
                    raise SpecError(f"seed range {part.strip()!r} runs backwards", field="seeds")
                if max_count is not None and len(items) + b - a + 1 > max_count:
                    raise SpecError(f"too many seeds: at most {max_count} per request", field="seeds")
                items.extend(range(a, b + 1))
            elif m := INT_PATTERN.match(part):
                items.append(check_seed(int(m.group(1))))
            else:
                bad = part.strip(" \t\r\n")
                raise SpecError(f"bad seed {bad!r} in {spec!r}: use integers and ranges like '0-99,120'", field="seeds")
    else:
        try:
            items = [check_seed(s) for s in spec]
        except TypeError:
            raise SpecError(
                f"seeds must be an integer, a list or a string like '0-99', got {spec!r}",
                field="seeds",
            ) from None
    if not items:
        raise SpecError("seed list is empty", field="seeds")
    if max_count is not None and len(items) > max_count:
        raise SpecError(f"too many seeds: {len(items)}, at most {max_count} per request", field="seeds")
    return items


def check_psi(psi: object) -> float:
    """psi as a float if finite and in [-1, 2], else SpecError."""
    try:
        value = float(psi)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise SpecError(f"psi must be a number in [{PSI_MIN:g}, {PSI_MAX:g}], got {psi!r}", field="psi") from None
    if isinstance(psi, bool) or not math.isfinite(value) or not PSI_MIN <= value <= PSI_MAX:
        raise SpecError(f"psi must be a finite number in [{PSI_MIN:g}, {PSI_MAX:g}], got {psi!r}", field="psi")
    return value


def check_noise(noise: object) -> str:
    """noise if it is one of const, random, none, else SpecError."""
    if noise not in NOISE_MODES:
        raise SpecError(f"noise must be one of {', '.join(NOISE_MODES)}, got {noise!r}", field="noise")
    return noise  # type: ignore[return-value]


def check_rotate(rotate: object) -> float:
    """rotate (degrees in [-360, 360]; None means 0) as a float, else SpecError."""
    rotate = 0.0 if rotate is None else rotate
    try:
        if isinstance(rotate, bool):
            raise TypeError
        angle = float(rotate)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise SpecError(f"rotate must be a number of degrees, got {rotate!r}", field="rotate") from None
    if not math.isfinite(angle) or abs(angle) > ROTATE_MAX:
        raise SpecError(f"rotate must be a finite angle in [-{ROTATE_MAX:g}, {ROTATE_MAX:g}] degrees, got {rotate!r}",
                        field="rotate")
    return angle + 0.0  # -0.0 becomes 0.0


def check_translate(translate: object) -> tuple[float, float]:
    """translate ((x, y), each in [-100, 100] image sizes; a pair or "x,y"; None means no shift) as floats, else
    SpecError."""
    translate = (0.0, 0.0) if translate is None else translate
    if isinstance(translate, str):
        translate = translate.split(",")
    try:
        if isinstance(translate, (str, bytes)) or len(translate) != 2 or any(isinstance(t, bool) for t in translate):
            raise TypeError
        shift = (float(translate[0]), float(translate[1]))
    except (TypeError, ValueError):
        raise SpecError(f"translate must be two numbers x,y, got {translate!r}", field="translate") from None
    if not all(math.isfinite(t) and abs(t) <= TRANSLATE_MAX for t in shift):
        raise SpecError(f"translate must be two finite numbers in [-{TRANSLATE_MAX:g}, {TRANSLATE_MAX:g}] (image "
                        f"sizes), got {translate!r}", field="translate")
    return shift[0] + 0.0, shift[1] + 0.0  # -0.0 becomes 0.0


def add_precision_flag(p: argparse.ArgumentParser) -> None:
    """--precision of `ganserve generate` and `ganserve serve` (a backend option, not an image parameter)."""
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"),
                   help="of the torch/compile backends: on CUDA fp16 by default for ProGAN/StyleGAN, fp32 for "
                        "StyleGAN2/3 (whose fp16 runs only the layers their source ran in float16); on the CPU fp32, "
                        "or bf16 as an opt-in (faster on CPUs with bfloat16 instructions; pixels differ from fp32's)")
