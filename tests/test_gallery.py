"""The gallery page at GET /, driven end to end in headless Chromium against a real server on loopback.

Needs `chromium` and `chromedriver` on the PATH (Debian's packages chromium and chromium-driver, which .ci/run
installs when it can) and skips with the reason without them; the test installs nothing. A screenshot lands in
test-artifacts/.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("GANSERVE_TEST_ARTIFACTS", ROOT / "test-artifacts"))


def _require_chromium() -> None:
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    if missing:
        pytest.skip(f"headless Chromium is not installed ({' and '.join(missing)} not on the PATH; on Debian: "
                    "apt-get install chromium chromium-driver, which .ci/run does as root)")


@pytest.fixture(scope="module")
def browser():
    _require_chromium()
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the dev extra")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--window-size=1200,1600"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live_server(model_dirs, tmp_path_factory):
    """`ganserve serve` on a free loopback port with the tiny StyleGAN (the default) and the tiny ProGAN as "old";
    yields its base URL."""
    port = _free_port()
    log = tmp_path_factory.mktemp("gallery") / "server.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ganserve.cli", "serve", model_dirs["stylegan"], f"old={model_dirs['progan']}",
         "--host", "127.0.0.1",
         "--port", str(port), "--backend", "torch", "--device", "cpu", "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=log.open("w"), start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"the server exited: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > end:
                raise AssertionError("the server did not become healthy within 90 s")
            time.sleep(0.25)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait(driver, script: str, timeout: float = 60, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; page error: {driver.find_element('id', 'error').text!r}")


# Pixel fingerprint of every decoded image in a container, read back through a canvas.
FINGERPRINTS = """
const imgs = [...document.querySelectorAll(arguments[0] + ' .cell.loaded img')];
return imgs.map((img) => {
  const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
  const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
  return Array.from(ctx.getImageData(0, 0, c.width, c.height).data).join(',');
});
"""


def _rerendered(driver, before: str) -> None:
    _wait(driver, f"return document.getElementById('grid').dataset.generation !== '{before}'", what="a re-render")


def _generation(driver) -> str:
    return driver.execute_script("return document.getElementById('grid').dataset.generation")


def _loaded(driver, selector: str, count: int, what: str) -> list[str]:
    script = f"return document.querySelectorAll('{selector} .cell.loaded').length >= {count}"
    _wait(driver, script, what=what)
    return driver.execute_script(FINGERPRINTS, selector)


def test_gallery_grid_psi_slider_mixing_and_details(browser, live_server):
    browser.get(live_server + "/")
    first = _loaded(browser, "#grid", 24, "the seed grid to fill")
    assert len(first) == 24 and len(set(first)) > 20  # decoded, and different seeds look different
    size = browser.execute_script("const i = document.querySelector('#grid .cell.loaded img'); return i.naturalWidth")
    assert size == 16
    assert not browser.find_element("id", "class-label").is_displayed()  # an unconditional model: no class control

    # psi slider to 0: every seed turns into the average image
    before = _generation(browser)
    browser.execute_script("const s = document.getElementById('psi'); s.value = '0';"
                           "s.dispatchEvent(new Event('input'));")
    _rerendered(browser, before)
    at_zero = _loaded(browser, "#grid", 24, "the grid at psi 0")
    assert len(set(at_zero)) == 1 and at_zero[0] not in first

    # next page shows other seeds
    before = _generation(browser)
    browser.execute_script("const s = document.getElementById('psi'); s.value = '1';"
                           "s.dispatchEvent(new Event('input'));")
    _rerendered(browser, before)
    browser.find_element("id", "next").click()
    _wait(browser, "return document.querySelector('#grid .cell').dataset.seed === '24'", what="page 2")
    _loaded(browser, "#grid", 24, "page 2 to fill")

    # style mixing grid: 3 row seeds x 4 column seeds, with the heads
    browser.find_element("id", "mix-go").click()
    mix = _loaded(browser, "#mix-grid", 3 * 4 + 3 + 4, "the mixing grid")
    assert len(mix) == 19
    # with every layer mixed, a cell is its column seed's image
    browser.execute_script("document.getElementById('mix-preset').value = 'all'")
    before = _generation(browser)
    browser.find_element("id", "mix-go").click()
    _rerendered(browser, before)
    _loaded(browser, "#mix-grid", 19, "the all-layers mixing grid")
    cells = browser.execute_script(
        "return [...document.querySelectorAll('#mix-grid tr')].map(tr => [...tr.querySelectorAll('.cell')]"
        ".map(c => { const i = c.querySelector('img'); const k = document.createElement('canvas');"
        "k.width = i.naturalWidth; k.height = i.naturalHeight; const x = k.getContext('2d'); x.drawImage(i, 0, 0);"
        "return Array.from(x.getImageData(0, 0, k.width, k.height).data).join(','); }))")
    header, row = cells[0], cells[1]
    assert row[1:] == header  # row seed x column seed with all layers == column seed

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "gallery.png"))

    # clicking an image shows its parameters, the curl line and a download link
    browser.execute_script("document.querySelector('#grid .cell.loaded').click()")
    _wait(browser, "return document.getElementById('details').open", what="the details dialog")
    curl = browser.find_element("id", "details-curl").text
    assert curl.startswith("curl '") and "/generate?seed=24" in curl and "-o seed24.png" in curl
    link = browser.find_element("id", "details-download")
    assert link.get_attribute("download") == "seed24.png" and link.get_attribute("href").startswith("blob:")
    browser.find_element("id", "details-close").click()

    # a server error is shown plainly
    browser.execute_script("document.getElementById('mix-preset').value = 'custom';"
                           "document.getElementById('mix-custom').value = '0-99';")
    browser.find_element("id", "mix-go").click()
    message = _wait(browser, "const e = document.getElementById('error'); return !e.hidden && e.textContent",
                    what="an error message")
    assert "mix_layers" in message and "out of range" in message


def test_gallery_asks_a_class_conditional_model_for_a_class(browser, tmp_path):
    """A conditional model's requests carry `class` (the control shows only for such models), so no 422s."""
    from test_stylegan2 import tiny_sg2

    from ganserve.models.weights import save_model
    from ganserve.serve.process import ServerProcess

    model = save_model(tiny_sg2(c_dim=4), tmp_path / "cond")
    with ServerProcess([f"cond={model}"], "--backend", "torch", "--device", "cpu", "--workers-per-device", "1",
                       "--log-level", "warning", log=tmp_path / "server.log") as server:
        browser.get(server.url + "/")
        first = _loaded(browser, "#grid", 24, "the seed grid of the conditional model")
        assert browser.find_element("id", "class-label").is_displayed()
        assert browser.find_element("id", "error").text == ""
        before = _generation(browser)
        browser.execute_script("const c = document.getElementById('class'); c.value = '3';"
                               "c.dispatchEvent(new Event('change'));")
        _rerendered(browser, before)
        third = _loaded(browser, "#grid", 24, "the grid of class 3")
        assert sum(a != b for a, b in zip(first, third)) > 20  # another class, other images
        browser.execute_script("document.querySelector('#grid .cell.loaded').click()")
        _wait(browser, "return document.getElementById('details').open", what="the details dialog")
        assert "class=3" in browser.find_element("id", "details-curl").text


def _details(driver, index: int) -> None:
    driver.execute_script(f"document.querySelectorAll('#grid .cell.loaded')[{index}].click()")
    _wait(driver, "return document.getElementById('details').open", what="the details dialog")


def _morph_from_details(driver, to_seed: int, steps: int) -> list[str]:
    driver.execute_script(f"document.getElementById('details-morph-to').value = '{to_seed}';"
                          f"document.getElementById('details-morph-steps').value = '{steps}';"
                          "document.getElementById('details-morph-go').click()")
    assert not driver.execute_script("return document.getElementById('details').open")
    frames = _loaded(driver, "#morph-strip", steps, "the morph strip")
    _wait(driver, "return document.getElementById('morph-strip').dataset.done === '1'", what="the end of the stream")
    indices = driver.execute_script(
        "return [...document.querySelectorAll('#morph-strip .cell')].map(c => c.dataset.index)")
    assert indices == [str(i) for i in range(steps)]
    return frames


# The JSON behind the details panel's "Download w" link, read back from its blob URL.
SAVED_W = """
const done = arguments[arguments.length - 1];
const link = document.getElementById('details-w-file');
fetch(link.href).then(r => r.text()).then(t => done([link.download, t]), e => done(['', String(e)]));
"""


def test_gallery_morph_strip_and_w_download(browser, live_server):
    browser.get(live_server + "/")
    grid = _loaded(browser, "#grid", 24, "the seed grid to fill")  # seeds 0-23, in order

    # from seed 2's details: a morph to seed 7 in 6 frames, in order, its ends the two seeds' images
    _details(browser, 2)
    assert browser.find_element("id", "details-w").is_displayed()
    frames = _morph_from_details(browser, 7, 6)
    assert frames[0] == grid[2] and frames[-1] == grid[7] and len(set(frames)) == 6
    assert browser.execute_script("return document.getElementById('morph-strip').dataset.space") == "w"
    assert browser.find_element("id", "error").text == ""

    # the strip's own controls, at psi 0.5 and in z: both ends still the seeds' images at that psi
    before = _generation(browser)
    browser.execute_script("const s = document.getElementById('psi'); s.value = '0.5';"
                           "s.dispatchEvent(new Event('input'));")
    _rerendered(browser, before)
    at_half = _loaded(browser, "#grid", 24, "the grid at psi 0.5")
    browser.execute_script("document.getElementById('morph-from').value = '1'; document.getElementById('morph-to')"
                           ".value = '4'; document.getElementById('morph-steps').value = '4';"
                           "document.getElementById('morph-space').value = 'z';"
                           "document.getElementById('morph-go').click()")
    _wait(browser, "return document.getElementById('morph-strip').dataset.space === 'z'", what="a morph in z")
    in_z = _loaded(browser, "#morph-strip", 4, "the morph strip in z")
    assert len(in_z) == 4 and in_z[0] == at_half[1] and in_z[-1] == at_half[4]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "gallery-morph.png"))

    # "Download w" saves what GET /latents gives for the image's seed and parameters
    _details(browser, 3)
    browser.save_screenshot(str(ARTIFACTS / "gallery-details.png"))
    browser.find_element("id", "details-w").click()
    _wait(browser, "return (document.getElementById('details-w-file').href || '').startsWith('blob:')",
          what="the w file")
    name, text = browser.execute_async_script(SAVED_W)
    assert name == "seed3-w.json"
    with httpx.Client(base_url=live_server, timeout=30) as http:
        want = http.get("/latents", params={"seed": 3, "psi": "0.50"}).json()
    assert json.loads(text) == want and len(want["w"]) > 1
    browser.find_element("id", "details-close").click()

    # a too-long morph is the server's 413, shown plainly
    browser.execute_script("document.getElementById('morph-steps').max = '5000';"
                           "document.getElementById('morph-steps').value = '1500';"
                           "document.getElementById('morph-space').value = '';")
    browser.execute_script("state.maxFrames = 5000; document.getElementById('morph-go').click()")
    message = _wait(browser, "const e = document.getElementById('error'); return !e.hidden && e.textContent",
                    what="an error message")
    assert "413" in message and "steps" in message

    # ProGAN: no w to download; its morph walks in z
    before = _generation(browser)
    browser.execute_script("const m = document.getElementById('model'); m.value = 'old';"
                           "m.dispatchEvent(new Event('change'));")
    _rerendered(browser, before)
    old = _loaded(browser, "#grid", 24, "the ProGAN grid")
    _details(browser, 0)
    assert not browser.find_element("id", "details-w").is_displayed()
    frames = _morph_from_details(browser, 5, 3)
    assert frames[0] == old[0] and frames[-1] == old[5]
    assert browser.execute_script("return document.getElementById('morph-strip').dataset.space") == "z"


def test_gallery_morph_and_w_download_send_the_api_key(browser, model_dirs, tmp_path):
    """With ?key=, the morph stream and the w download carry X-API-Key like the grid's requests (no 401s)."""
    from ganserve.serve.process import ServerProcess

    with ServerProcess([model_dirs["stylegan"]], "--backend", "torch", "--device", "cpu", "--api-key", "s3cret",
                       "--log-level", "warning", log=tmp_path / "server.log") as server:
        browser.get(server.url + "/?key=s3cret")
        grid = _loaded(browser, "#grid", 24, "the grid behind an API key")
        _details(browser, 0)
        assert _morph_from_details(browser, 1, 3)[-1] == grid[1]
        _details(browser, 1)
        browser.find_element("id", "details-w").click()
        _wait(browser, "return (document.getElementById('details-w-file').href || '').startsWith('blob:')",
              what="the w file")
        name, text = browser.execute_async_script(SAVED_W)
        assert name == "seed1-w.json" and json.loads(text)["seed"] == 1
        assert browser.find_element("id", "error").text == ""
