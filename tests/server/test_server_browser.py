"""The page in a real headless browser: Debian's chromium driven by Selenium through
/usr/bin/chromedriver (no Selenium Manager download). Submits txt2img from the generated form and
measures the picture that appears; pastes a workflow and cancels it; enters a token when asked.

``GRAPHFLOW_SCREENSHOT=docs/server_page.png`` also saves the page as the README shows it."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from graphflow.client import Client
from tests.server_helpers import ProcessServer, servers, wait_for  # noqa: F401 (servers: a fixture)
from tests.server_nodes import naps_workflow

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("no browser: install Debian's chromium and chromium-driver (.ci/run does) to run the page test",
                allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extra: pip install -e '.[test]'")


@pytest.fixture
def browser(tmp_path):
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager reach for the network
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1280,1080",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


PIXELS = """
const img = arguments[0], c = document.createElement('canvas');
c.width = img.naturalWidth; c.height = img.naturalHeight;
const g = c.getContext('2d'); g.drawImage(img, 0, 0);
const at = (x, y) => Array.from(g.getImageData(x, y, 1, 1).data.slice(0, 3));
return {w: img.naturalWidth, h: img.naturalHeight, centre: at(32, 32), corner: at(2, 2)};
"""


def test_page_submits_txt2img_and_shows_the_picture(tmp_path, browser, servers):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    s = ProcessServer(tmp_path)
    servers.append(s)
    browser.get(s.url + "/")
    wait_for(lambda: browser.find_elements(By.ID, "param-seed"), timeout=30)
    assert Select(browser.find_element(By.ID, "workflow")).first_selected_option.get_attribute("value") == "txt2img"
    labels = browser.find_element(By.ID, "params").text
    assert "noise seed" in labels and "what to draw" in labels  # the form is built from the params' descriptions
    assert browser.find_element(By.ID, "param-prompt").get_attribute("value") == "a red circle on a blue background"
    for name, value in (("seed", "3"), ("steps", "12")):
        field = browser.find_element(By.ID, f"param-{name}")
        field.clear()
        field.send_keys(value)
    browser.find_element(By.ID, "run").click()

    statuses, deadline = set(), time.monotonic() + 300
    while not browser.find_elements(By.CSS_SELECTOR, "#result img[src^='blob:']"):
        statuses.add(browser.find_element(By.ID, "status").text)
        assert time.monotonic() < deadline, statuses
        time.sleep(0.05)
    img = browser.find_element(By.CSS_SELECTOR, "#result img")
    wait_for(lambda: browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img), timeout=30)
    px = browser.execute_script(PIXELS, img)
    assert (px["w"], px["h"]) == (64, 64)
    # a red circle on a blue background: measured in the picture the browser shows
    assert px["centre"][0] > px["centre"][2] + 60 and px["corner"][2] > px["corner"][0] + 60, px
    assert any(st.startswith("running") or "step" in st for st in statuses), statuses
    bar = browser.execute_script("return state.progress")  # every event the page read, and the bar after it
    steps = [v for kind, v in bar if kind == "loop_step"]
    assert len(steps) == 12 and steps == sorted(steps) and 0 < steps[0] < steps[-1] < 1  # the bar moved with the loop
    assert bar[-1] == ["run_finished", 1]
    assert browser.find_element(By.ID, "status").text.startswith("done")
    assert float(browser.find_element(By.ID, "progress").get_attribute("value")) == 1.0

    runs = Client(s.url).history()
    assert len(runs) == 1 and runs[0]["params"]["seed"] == 3 and runs[0]["params"]["steps"] == 12 and runs[0]["status"] == "done"
    card = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, f"#history .run[data-id='{runs[0]['id']}'] img[src^='blob:']"), timeout=30)
    wait_for(lambda: browser.execute_script("return arguments[0].naturalWidth", card[0]) == 64, timeout=30)

    browser.execute_script("window.scrollTo(0, 0)")
    shot = tmp_path / "page.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("GRAPHFLOW_SCREENSHOT"):
        shutil.copyfile(shot, Path(os.environ["GRAPHFLOW_SCREENSHOT"]))


def test_page_pasted_workflow_cancel_and_token(tmp_path, browser, servers):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    s = ProcessServer(tmp_path, env={"GRAPHFLOW_TOKEN": "pa55"})
    servers.append(s)
    browser.get(s.url + "/")
    alert = wait_for(lambda: _alert(browser), timeout=30)  # the page asks for the token once
    alert.send_keys("pa55")
    alert.accept()
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#workflow option[value='hello']"), timeout=30)

    Select(browser.find_element(By.ID, "workflow")).select_by_value("")
    doc = browser.find_element(By.ID, "document")
    browser.execute_script("arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input'));", doc,
                           json.dumps(naps_workflow(400, 0.05)))
    browser.find_element(By.ID, "run").click()
    c = Client(s.url, token="pa55")
    rid = wait_for(lambda: [r["id"] for r in c.history() if r["status"] == "running"], timeout=60)[0]
    wait_for(lambda: "step" in browser.find_element(By.ID, "status").text, timeout=60)
    browser.find_element(By.ID, "cancel").click()
    assert c.wait(rid, timeout=60)["status"] == "cancelled"
    wait_for(lambda: browser.find_element(By.ID, "status").text.startswith("cancelled"), timeout=30)
    assert len(c.history()) == 1
    # the ended run's card deletes it (with the token the page holds): gone from the server and the page
    delete = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, f".run[data-id='{rid}'] .delete"), timeout=30)[0]
    delete.click()
    wait_for(lambda: not c.history(), timeout=30)
    wait_for(lambda: not browser.find_elements(By.CSS_SELECTOR, f".run[data-id='{rid}']"), timeout=30)
    assert not (tmp_path / "out" / "runs" / rid).exists()


def _alert(browser):
    try:
        return browser.switch_to.alert
    except Exception:
        return None
