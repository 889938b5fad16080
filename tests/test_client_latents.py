"""The client's latents methods (latents, generate_latents, interpolate, animation) against a real server, sync and
async, and their chunking and 503 retries against a scripted one."""

from __future__ import annotations

import asyncio
import io
import json

import numpy as np
import pytest
from PIL import Image
from test_client_retries import ScriptedServer, busy

from ganserve import multipart
from ganserve.client import MAX_CHUNK_BYTES, AsyncClient, Client, ServerError, _latent_chunks
from ganserve.imaging import encode
from ganserve.serve.process import ServerProcess

MAX_SEEDS = 16  # the server's --max-seeds: also the most frames of one interpolation
MIX = dict(psi=0.7, mix_seed=5, mix_layers="coarse")


@pytest.fixture(scope="module")
def server(model_dirs, tmp_path_factory):
    flags = ["--backend", "torch", "--device", "cpu", "--max-batch-size", "8", "--max-seeds", str(MAX_SEEDS),
             "--log-level", "warning"]
    models = [f"faces={model_dirs['stylegan']}", f"old={model_dirs['progan']}"]
    with ServerProcess(models, *flags, log=tmp_path_factory.mktemp("cl") / "s.log") as s:
        yield s


def same(a: Image.Image, b: Image.Image) -> bool:
    return np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_latents_give_back_the_seeds_images_from_w_and_from_z(server):
    with Client(server.url) as client:
        lat = client.latents(7, **MIX)
        assert lat["seed"] == 7 and lat["model"] == "faces"
        assert lat["z"].dtype == np.float32 and lat["z"].shape == (32,)
        num_ws = client.models()["models"][0]["num_ws"]
        assert lat["w"].dtype == np.float32 and lat["w"].shape == (num_ws, 32)
        want = client.generate(7, **MIX)
        [(i, from_w)] = list(client.generate_latents(w=[lat["w"]]))
        assert i == 0 and same(from_w, want)
        [(i, from_z)] = list(client.generate_latents(z=[lat["z"].tolist()], **MIX))  # lists as well as arrays
        assert i == 0 and same(from_z, want)
        assert not same(client.generate(7), want)  # the parameters mattered

        # many ws, split into chunks over two requests at once: each index is the caller's
        seeds = list(range(20, 27))
        ws = np.stack([client.latents(s, psi=0.5)["w"] for s in seeds])
        got = dict(client.generate_latents(w=ws, concurrency=2, chunk_size=3))
        assert sorted(got) == list(range(len(seeds)))
        assert all(same(got[i], client.generate(s, psi=0.5)) for i, s in enumerate(seeds))
        assert [i for i, _ in client.generate_latents_bytes(w=ws[:2], format="jpeg")] != []

        # ProGAN: no w space; its z still gives the seed's image
        old = client.latents(3, model="old")
        assert old["w"] is None and old["model"] == "old" and old["z"].shape == (32,)
        [(_, image)] = list(client.generate_latents(z=[old["z"]], model="old"))
        assert same(image, client.generate(3, model="old"))


@pytest.mark.slow
def test_interpolation_ends_at_the_seeds_images_and_animates(server):
    with Client(server.url) as client:
        frames = list(client.interpolate(3, 9, 5, psi=0.8))
        assert len(frames) == 5 and all(f.size == (16, 16) for f in frames)
        assert same(frames[0], client.generate(3, psi=0.8)) and same(frames[-1], client.generate(9, psi=0.8))
        assert len({np.asarray(f).tobytes() for f in frames}) == 5  # frames in between differ from the ends
        in_z = list(client.interpolate(3, 9, 4, space="z", psi=0.8))
        assert same(in_z[0], frames[0]) and same(in_z[-1], frames[-1]) and not same(in_z[1], frames[1])
        jpegs = list(client.interpolate_bytes(1, 2, 3, format="jpeg"))
        assert len(jpegs) == 3 and all(j.startswith(b"\xff\xd8") for j in jpegs)
        old = list(client.interpolate(1, 2, 3, model="old"))  # ProGAN: in z
        assert same(old[0], client.generate(1, model="old")) and same(old[-1], client.generate(2, model="old"))

        for fmt, magic in (("gif", b"GIF8"), ("webp", b"RIFF")):
            data = client.animation(3, 9, 6, format=fmt, fps=10)
            assert data.startswith(magic)
            animated = Image.open(io.BytesIO(data))
            assert animated.n_frames == 6
            animated.seek(1)
            animated.load()
            assert animated.info["duration"] == 100  # fps=10
        animated.seek(0)
        assert animated.size == (16, 16)


@pytest.mark.slow
def test_bad_latents_and_steps_are_server_errors_with_their_field(server):
    with Client(server.url) as client:
        cases = [
            (lambda: list(client.generate_latents(w=[np.zeros((3, 7), np.float32)])), 422, "w"),
            (lambda: list(client.generate_latents(z=[[0.5] * 31])), 422, "z"),
            (lambda: list(client.generate_latents(w=[np.zeros(32)], psi=0.5)), 422, "psi"),
            (lambda: list(client.generate_latents(w=[np.zeros(32)], model="old")), 400, "w"),
            (lambda: list(client.interpolate(1, 2, 1)), 422, "steps"),
            (lambda: list(client.interpolate(1, 2, MAX_SEEDS + 1)), 413, "steps"),
            (lambda: list(client.interpolate(1, 2, 3, space="w", model="old")), 400, "space"),
            (lambda: client.animation(1, 2, 1), 422, "steps"),
            (lambda: client.latents(1, psi=9), 422, "psi"),
        ]
        for call, status, field in cases:
            with pytest.raises(ServerError) as e:
                call()
            assert (e.value.status, e.value.field) == (status, field), e.value
        with pytest.raises(ValueError, match="exactly one of z and w"):
            list(client.generate_latents())


@pytest.mark.slow
def test_async_client_latents(server):
    async def run():
        async with AsyncClient(server.url) as client:
            lat = await client.latents(11, **MIX)
            from_w = [x async for x in client.generate_latents(w=[lat["w"], lat["w"]])]
            both_forms = [x async for x in client.generate_latents(w=[lat["w"], lat["w"][2], lat["w"][2].tolist()])]
            plain = (await client.latents(11))["w"]  # no truncation or mixing: every layer's w is the same
            broadcast = [x async for x in client.generate_latents(w=plain[:1])]  # one w_dim vector per image
            from_z = [x async for x in client.generate_latents(z=np.stack([lat["z"]] * 3), concurrency=2,
                                                               chunk_size=1, **MIX)]
            frames = [f async for f in client.interpolate(11, 12, 4, **MIX)]
            gif = await client.animation(11, 12, 4)
            ends = [await client.generate(11, **MIX), await client.generate(12, **MIX), await client.generate(11)]
            with pytest.raises(ServerError) as e:
                [f async for f in client.interpolate(11, 12, 1)]
            return lat, dict(from_w), dict(from_z), frames, gif, ends, e.value, plain, broadcast, dict(both_forms)

    lat, from_w, from_z, frames, gif, ends, error, plain, [(_, broadcast)], both_forms = asyncio.run(run())
    assert same(both_forms[0], ends[0]) and same(both_forms[1], both_forms[2]) and not same(both_forms[1], ends[0])
    assert (plain == plain[0]).all() and same(broadcast, ends[2])
    assert lat["w"].shape[1] == 32 and sorted(from_w) == [0, 1] and sorted(from_z) == [0, 1, 2]
    assert same(from_w[0], ends[0]) and same(from_w[1], ends[0]) and all(same(im, ends[0]) for im in from_z.values())
    assert len(frames) == 4 and same(frames[0], ends[0]) and same(frames[-1], ends[1])
    assert Image.open(io.BytesIO(gif)).n_frames == 4
    assert error.status == 422 and error.field == "steps"


# -- against a scripted server -------------------------------------------------------------------------------------
PNG = encode(np.full((4, 4, 3), 9, np.uint8))


def latent_stream(count: int, order=None) -> tuple[int, dict, bytes]:
    boundary = multipart.new_boundary()
    body = b"".join(multipart.part(boundary, {"Content-Type": "image/png", "X-Latent": "z", "X-Index": str(i)}, PNG)
                    for i in (order or range(count))) + multipart.closing(boundary)
    return 200, {"Content-Type": multipart.content_type(boundary)}, body


@pytest.fixture
def scripted():
    s = ScriptedServer()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def test_latent_chunks_keep_the_callers_indices_and_are_retried_after_a_503(scripted):
    scripted.script = [busy(1), latent_stream(2, order=[1, 0]), latent_stream(1)]
    zs = np.arange(3 * 4, dtype=np.float32).reshape(3, 4) / 7
    with Client(scripted.url) as client:
        got = dict(client.generate_latents_bytes(z=zs, chunk_size=2, psi=0.5))
    assert got == {0: PNG, 1: PNG, 2: PNG}
    bodies = [json.loads(r["body"]) for r in scripted.requests]
    assert bodies == [{"z": zs[:2].tolist(), "psi": 0.5}] * 2 + [{"z": zs[2:].tolist(), "psi": 0.5}]
    assert np.array_equal(np.asarray(bodies[0]["z"], np.float32), zs[:2])  # float32 values arrive exactly
    assert scripted.gaps()[0] >= 0.95


def test_interpolate_frames_out_of_order_are_refused(scripted):
    scripted.script = [latent_stream(3, order=[0, 2, 1])]
    with Client(scripted.url) as client, pytest.raises(ValueError, match="frame 2 arrived where frame 1"):
        list(client.interpolate_bytes(1, 2, 3))
    assert scripted.requests[0]["path"] == "/interpolate?seed=1&to_seed=2&steps=3"


def test_latent_chunks_stay_under_the_body_limit():
    ws = [[[0.123456789] * 512] * 18] * 200  # about 180 kB of JSON each
    chunks = _latent_chunks(ws, concurrency=1, chunk_size=None)
    assert [o for o, _ in chunks] == list(np.cumsum([0] + [len(c) for _, c in chunks[:-1]]))
    assert sum(len(c) for _, c in chunks) == 200 and len(chunks) > 2
    assert all(len(json.dumps(c)) <= MAX_CHUNK_BYTES for _, c in chunks)
    assert [len(c) for _, c in _latent_chunks([[0.0]] * 10, concurrency=3, chunk_size=None)] == [4, 4, 2]
