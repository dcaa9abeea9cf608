"""The web app in a real browser: headless Chromium driven by Playwright, on a tiny model.

Needs the system's Chromium (the Debian package ``chromium``; ``CHROMIUM`` names another
executable): the tests fail, not skip, without it, so a machine that runs the suite runs
them. ``STREAMINGT2V_SCREENSHOT=PATH`` keeps the README's screenshot of the app.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

import pytest

from streamingt2v.config import UsageError
from streamingt2v.video_io import read_video


def _chromium() -> str:
    path = (
        os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )
    if path is None:
        pytest.fail("the browser tests need Chromium: apt-get install chromium (or set CHROMIUM)")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    from streamingt2v.ui import serve

    out_dir = tmp_path_factory.mktemp("runs")
    page, url = serve(tiny_model_dir, out_dir, port=_free_port(), device="cpu", block=False)
    yield url, out_dir
    page.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        yield chromium
        chromium.close()


def _status(tab) -> str:
    return tab.locator("#status").inner_text()


def _wait(tab, condition, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"no {what}; status: {_status(tab)}"
        time.sleep(0.2)


def _fill(tab, prompt: str, frames: int) -> None:
    tab.locator("#prompt textarea").fill(prompt)
    tab.locator("#frames input").fill(str(frames))
    tab.locator("#steps input").fill("2")


def _start(tab, prompt: str, frames: int) -> None:
    _fill(tab, prompt, frames)
    tab.locator("#start").click()


def test_preview_stop_and_download_the_partial_video(served, browser, tmp_path):
    url, out_dir = served
    tab = browser.new_page(viewport={"width": 1280, "height": 900})
    tab.goto(url)
    _fill(tab, "a red circle moving right", 4000)
    tab.get_by_role("button", name="Plan").click()
    plan = tab.locator("#plan")
    _wait(tab, lambda: "predicted time" in plan.inner_text(), "plan")
    tab.locator("#start").click()
    _wait(tab, lambda: tab.locator("#preview img").count() > 0, "chunk preview")
    assert "making 'a red circle moving right'" in _status(tab)  # the run goes on
    if os.environ.get("STREAMINGT2V_SCREENSHOT"):
        tab.screenshot(path=os.environ["STREAMINGT2V_SCREENSHOT"])
    tab.locator("#stop").click()
    _wait(tab, lambda: "stopped: kept" in _status(tab), "stop")
    _wait(tab, lambda: tab.locator("#files a").count() >= 2, "download links")
    link = tab.locator('#files a[download$=".mp4"]').first
    with tab.expect_download() as download:
        link.click()
    saved = tmp_path / "partial.mp4"
    download.value.save_as(saved)
    (manifest_file,) = [p for p in out_dir.glob("*.mp4.json")]
    manifest = json.loads(manifest_file.read_text())
    finished = sum(chunk["frames"] for chunk in manifest["chunks"])
    assert manifest["interrupted"] and 16 <= finished < 4000
    assert len(read_video(saved)) == manifest["frames"] == finished
    tab.close()


def test_a_second_tab_sees_the_queue(served, browser):
    url, _ = served
    first, second = browser.new_page(), browser.new_page()
    first.goto(url)
    second.goto(url)
    _start(first, "a blue square moving up", 4000)
    _wait(second, lambda: "1 running" in _status(second), "running job in the second tab")
    _start(second, "a green circle moving left", 4000)
    _wait(second, lambda: "waiting: position 1 in the queue" in _status(second), "queue")
    second.locator("#stop").click()
    first.locator("#stop").click()
    _wait(first, lambda: "stopped" in _status(first), "stop")
    _wait(second, lambda: "stopped" in _status(second), "stop of the queued job")
    first.close()
    second.close()


def test_an_empty_prompt_shows_an_error_in_the_page(served, browser):
    url, out_dir = served
    tab = browser.new_page()
    tab.goto(url)
    before = sorted(p.name for p in Path(out_dir).iterdir())
    _start(tab, "   ", 40)
    message = tab.locator("#message")
    _wait(
        tab,
        lambda: "error: prompt must be a non-empty string" in message.inner_text(),
        "error message",
    )
    assert sorted(p.name for p in Path(out_dir).iterdir()) == before
    tab.close()


def _until(condition, job, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"job {job.label}: {job.state} {job.error}"
        time.sleep(0.05)


def _finished(app, job, seconds: float = 120):
    deadline = time.monotonic() + seconds
    while job.state in ("queued", "running"):
        assert time.monotonic() < deadline, f"job {job.label} did not end"
        time.sleep(0.1)
    assert job.state in ("done", "stopped"), job.error
    return job


def test_runs_are_resumed_extended_and_branched_from_the_app(tiny_model_dir, tmp_path):
    """The Runs tab's actions (the app's methods, without the page): a stopped run resumed to
    its frames, a run extended, a run branched; all into the output folder."""
    from streamingt2v.ui import App

    app = App(tiny_model_dir, tmp_path / "runs", device="cpu")
    first = _finished(app, app.start("a red circle moving right", "", 40, 3, 2, 7.5, 7.5, True))
    name = first.result.video.name
    assert app.runs() == [name] and app.manifest(name)["frames"] == 40
    longer = _finished(app, app.extend(name, 56))
    assert longer.result.frames == 56 and longer.result.video.parent == app.out_dir
    branch = _finished(app, app.branch(name, 2, 9))
    assert branch.result.frames == 40 and app.manifest(branch.result.video.name)["seed"] == 9
    stopped = app.start("a blue square", "", 4000, 1, 2, 7.5, 7.5, True)
    _until(lambda: stopped.frames_done >= 24 or stopped.state in ("done", "failed"), stopped)
    app.queue.stop(stopped.id)
    _finished(app, stopped)
    resumed = app.resume(stopped.result.video.name)
    # a chunk past where it stopped
    _until(lambda: resumed.frames_done > stopped.result.frames or resumed.error, resumed)
    app.queue.stop(resumed.id)
    _finished(app, resumed)
    manifest = app.manifest(stopped.result.video.name)
    assert manifest["resumed_from_frame"] == stopped.result.frames
    with pytest.raises(UsageError, match="no run"):
        app.extend("../outside.mp4", 80)
    timeline = {"segments": [{"prompt": "a red circle", "frames": 16},
                             {"prompt": "a blue circle", "frames": 8}]}  # fmt: skip
    made = _finished(app, app.start("", json.dumps(timeline), None, 0, 2, 7.5, 7.5, True))
    assert app.manifest(made.result.video.name)["timeline"]["segments"][1]["frames"] == 8
    with pytest.raises(UsageError, match="not JSON"):
        app.start("", "{segments", None, 0, 2, 7.5, 7.5, True)
    with pytest.raises(UsageError, match="not both"):
        app.start("a red circle", json.dumps(timeline), None, 0, 2, 7.5, 7.5, True)
