"""`minillava web` (`minillava.train.chat.web`) in a real browser: the server runs as `minillava web` in a subprocess on a
free port of 127.0.0.1, with a tiny MiniGPT-4 model rewired to answer a known text (then "###" and more, which
must not show) and slowed down per decoding step; headless Chromium, driven by Selenium through Debian's
chromedriver, uploads an image, asks, and reads the answer as it grows in the page. Bad images (not an image, too
large in pixels or in bytes) are refused with the reason shown in the page, and the server goes on serving.

Needs Debian's `chromium` and `chromium-driver` and PyPI's `selenium` (`.ci/run` installs them); skipped without,
except under `MINILLAVA_REQUIRE_BROWSER=1` (as `.ci/run` sets), where a missing browser fails the run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image
from sft_helpers import build_tiny_models
from test_chat import ANSWER, WORDS, command, slow_env, vocab_size
from test_eval_run import save_scripted


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# What this machine's closed network needs: no background connections, no first-run, a fresh profile.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1200,900",
)
MAX_IMAGE_MB = 1

missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
if missing and os.environ.get("MINILLAVA_REQUIRE_BROWSER") == "1":  # CI: the browser test must run, not skip
    raise RuntimeError(f"MINILLAVA_REQUIRE_BROWSER=1 but {' and '.join(missing)} missing: apt-get install chromium "
                       "chromium-driver")  # fmt: skip
pytestmark = pytest.mark.skipif(
    bool(missing), reason=f"no {' or '.join(missing)}: apt-get install chromium chromium-driver"
)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install selenium")
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("web")
    built = build_tiny_models(root / "built")
    model = save_scripted(built["minigpt4"][0], root / "minigpt4", [*WORDS, "#", "##"], "y")
    images = root / "images"
    images.mkdir()
    paths = {"model": model, "red": images / "red.png", "bad": images / "notes.png", "huge": images / "huge.png"}
    Image.new("RGB", (30, 20), "red").save(paths["red"])
    paths["bad"].write_text("a text file with an image's name")
    Image.new("1", (12_000, 12_000)).save(paths["huge"])  # a small file whose padded square is over the limit
    paths["big"] = images / "big.png"
    paths["big"].write_bytes(os.urandom(int(1.5 * 2**20)))  # over --max_image_mb 1
    return paths


@pytest.fixture(scope="module")
def server(files, tmp_path_factory):
    """`minillava web MODEL --port 0`: its URL once it says it serves."""
    workdir = tmp_path_factory.mktemp("web-server")
    log = workdir / "server.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            command("web", str(files["model"]), "--port", "0", "--max_image_mb", str(MAX_IMAGE_MB)),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=slow_env(workdir, vocab_size(files["model"])),
            cwd=workdir,
        )
    try:
        deadline = time.monotonic() + 120
        while not (match := re.search(r"serving on (http://127\.0\.0\.1:\d+/)", log.read_text())):
            assert process.poll() is None, f"minillava web ended:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"minillava web did not start:\n{log.read_text()}"
            time.sleep(0.2)
        yield match.group(1)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert "Traceback" not in log.read_text(), log.read_text()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = Options()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def text_of(driver, css: str) -> str:
    return driver.execute_script("const e = document.querySelector(arguments[0]); return e ? e.textContent : '';", css)


def wait_for(driver, css: str, pattern: str, timeout: float = 30.0) -> str:
    """Waits until the text of `css` matches `pattern`; returns it."""
    deadline = time.monotonic() + timeout
    while not re.search(pattern, text := text_of(driver, css)):
        assert time.monotonic() < deadline, (
            f"{css} says {text!r}, not {pattern!r}; error: {text_of(driver, '#error')!r}"
        )
        time.sleep(0.05)
    return text


def upload(driver, path: Path) -> None:
    driver.find_element(By.ID, "image").send_keys(str(path.resolve()))


def ask(driver, question: str, timeout: float = 60.0) -> tuple[list[str], int]:
    """Types `question`, sends it and reads the newest answer until it is done: the texts it showed, in order, and
    how many streamed events it got."""
    driver.find_element(By.ID, "text").send_keys(question)
    driver.find_element(By.ID, "send").click()
    seen, deadline = [], time.monotonic() + timeout
    script = (
        "const a = [...document.querySelectorAll('#chat .assistant')].pop();"
        "return a ? [a.querySelector('.text').textContent, a.classList.contains('done'), a.dataset.events] : null;"
    )
    while True:
        state = driver.execute_script(script)
        if state is not None:
            text, done, events = state
            if not seen or seen[-1] != text:
                seen.append(text)
            if done:
                return [value for value in seen if value], int(events)
        assert time.monotonic() < deadline, f"no answer; error: {text_of(driver, '#error')!r}"
        time.sleep(0.03)


def test_upload_an_image_ask_and_read_the_streamed_answer(server, files, browser, tmp_path):
    browser.get(server)
    assert "minigpt4" in text_of(browser, "#model") and "answers end at ###" in text_of(browser, "#model")
    upload(browser, files["red"])
    wait_for(browser, "#image-status", r"image ready: red\.png \(30x20\)")

    shown, events = ask(browser, "What is in the image?")
    assert shown[-1] == ANSWER and "#" not in "".join(shown)  # stopped at MiniGPT-4's "###", which is not shown
    # It grew as it was generated: several reads of the page saw it longer each time, each a start of the next.
    assert len(shown) >= 4, shown
    assert all(later.startswith(earlier) for earlier, later in zip(shown[:-1], shown[1:], strict=True)), shown
    assert events >= 4  # Server-Sent Events, one per streamed piece
    assert browser.execute_script("return document.querySelector('#chat .user img') !== null")  # the image went
    assert text_of(browser, "#image-status") == "" and text_of(browser, "#error") == ""

    shown, _ = ask(browser, "And now?")  # a second turn of the same conversation
    assert shown[-1] == ANSWER
    assert browser.execute_script("return document.querySelectorAll('#chat .assistant').length") == 2
    browser.save_screenshot(str(tmp_path / "chat.png"))
    browser.find_element(By.ID, "reset").click()
    deadline = time.monotonic() + 10
    while browser.execute_script("return document.querySelectorAll('#chat .message').length"):
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_bad_images_are_refused_in_the_page_and_the_server_goes_on(server, files, browser):
    browser.get(server)
    upload(browser, files["bad"])
    assert "notes.png is not an image" in wait_for(browser, "#error", r"not an image")
    upload(browser, files["huge"])
    assert "12000x12000" in wait_for(browser, "#error", r"padded to a square")
    upload(browser, files["big"])
    assert "big.png is 1.5 MiB" in wait_for(browser, "#error", rf"larger than the {MAX_IMAGE_MB} MiB")
    assert browser.execute_script("return document.querySelector('#preview').style.display") == "none"

    upload(browser, files["red"])  # the server still serves, and a good image is taken
    wait_for(browser, "#image-status", r"image ready")
    assert text_of(browser, "#error") == ""
    shown, _ = ask(browser, "What is it?")
    assert shown[-1] == ANSWER

    # The server's own limits, without the page's check in front: too many bytes, no session, no text.
    session = browser.execute_script("return SESSION")
    request = urllib.request.Request(
        f"{server}api/image?session={session}", data=files["big"].read_bytes(), headers={"X-Filename": "big.png"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 413 and "larger than the 1 MiB" in json.loads(refused.value.read())["error"]
    for body, message in (({"session": "nope", "text": "hi"}, "reload the page"), ({"session": session}, "no text")):
        request = urllib.request.Request(f"{server}api/chat", data=json.dumps(body).encode())
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 400 and message in json.loads(refused.value.read())["error"]
    with urllib.request.urlopen(f"{server}health", timeout=30) as response:
        assert json.loads(response.read())["ok"] is True
