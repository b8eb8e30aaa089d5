"""The static leaderboard site, opened in a real browser (Debian's headless Chromium via
its chromedriver) with the network blocked: the table renders, sorts numerically by the
mean of its mean ± std cells with missing values last, filters, shows values on hover, and
a second rendering gives the same bytes."""

import os
import shutil
import time
from pathlib import Path

import pytest

from cmbench.report.site import render_site

REPO = Path(__file__).resolve().parents[1]
CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

needs_browser = pytest.mark.skipif(
    not (CHROMEDRIVER and CHROMIUM),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run does)",
)


@pytest.mark.slow  # 22 s: in make test-slow (the make test budget)
def test_site_is_deterministic_and_self_contained(tmp_path):
    a, b = render_site(REPO / "results", tmp_path / "a"), render_site(REPO / "results", tmp_path / "b")
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    for page in (tmp_path / "a").rglob("*.html"):
        text = page.read_text()
        # nothing is fetched: no external scripts, styles, images or fonts (paper links are plain anchors)
        for attr in ('src="http', "src='http", "@import", "url(http", '<link rel="stylesheet"'):
            assert attr not in text, (page, attr)
    assert a.name == b.name == "index.html"


@pytest.mark.slow  # about 20 s of Chromium: make test-slow
@needs_browser
def test_site_in_a_headless_browser(tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    t0 = time.time()
    index = render_site(REPO / "results", tmp_path / "site")
    driver = _browser()
    try:
        driver.get(index.as_uri())
        suites = [a.text for a in driver.find_elements(By.CSS_SELECTOR, "#board tbody a")]
        assert "micro-digits-merge" in suites
        driver.get((index.parent / "micro-digits-merge" / "index.html").as_uri())
        rows = driver.find_elements(By.CSS_SELECTOR, "#board tbody tr")
        assert len(rows) >= 10

        headers = [th.text for th in driver.find_elements(By.CSS_SELECTOR, "#board th")]
        acc_col = headers.index("ACC")

        def column(i):
            cells = [
                r.find_elements(By.TAG_NAME, "td")[i] for r in driver.find_elements(By.CSS_SELECTOR, "#board tbody tr")
            ]
            return [c.get_attribute("data-v") for c in cells], [c.text for c in cells]

        acc_header = driver.find_elements(By.CSS_SELECTOR, "#board th")[acc_col]
        acc_header.click()  # numbers: descending first
        values, texts = column(acc_col)
        nums = [float(v) for v in values if v]
        assert nums == sorted(nums, reverse=True) and "[" in texts[0]  # mean [95 % interval]
        assert float(texts[0].split(" [")[0]) == pytest.approx(nums[0], abs=0.05)  # sorted by the mean
        acc_header.click()
        values, _ = column(acc_col)
        assert [float(v) for v in values if v] == sorted(nums)
        # a column with missing values keeps them last in both directions (a value removed here)
        driver.execute_script("document.querySelector('#board tbody tr').cells[%d].dataset.v = ''" % acc_col)
        for _ in range(2):
            acc_header.click()
            values, _ = column(acc_col)
            assert values[-1] == "" and all(values[:-1])

        # filter by name, then by data access
        driver.find_element(By.ID, "q").send_keys("ties")
        visible = [r for r in driver.find_elements(By.CSS_SELECTOR, "#board tbody tr") if r.is_displayed()]
        assert visible and all("ties" in r.get_attribute("data-label") for r in visible)
        driver.find_element(By.ID, "q").clear()
        driver.execute_script("document.getElementById('q').dispatchEvent(new Event('input'))")
        from selenium.webdriver.support.ui import Select

        Select(driver.find_element(By.ID, "access")).select_by_visible_text("calibration samples")
        visible = [r for r in driver.find_elements(By.CSS_SELECTOR, "#board tbody tr") if r.is_displayed()]
        assert visible and all(r.get_attribute("data-access") == "calibration samples" for r in visible)
        Select(driver.find_element(By.ID, "access")).select_by_visible_text("all")

        # hover: a point of the accuracy-over-steps curves, then a matrix cell
        point = driver.find_element(By.CSS_SELECTOR, "#curves circle")
        ActionChains(driver).move_to_element(point).perform()
        tip = driver.find_element(By.ID, "tip")
        assert tip.is_displayed() and "step" in tip.text and "%" in tip.text
        cell = driver.find_elements(By.CSS_SELECTOR, "#mats td")[-1]
        ActionChains(driver).move_to_element(cell).perform()
        assert tip.is_displayed() and "after step" in tip.text and "%" in tip.text
        # a job's matrix on demand
        details = driver.find_element(By.CSS_SELECTOR, "details[data-label]")
        details.find_element(By.TAG_NAME, "summary").click()
        # the page renders it in the details' toggle handler, which the browser fires as a
        # separate task after the click (HTML spec), so wait for it rather than race it
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(driver, 10).until(lambda _: details.find_elements(By.CSS_SELECTOR, ".mat table"))

        driver.execute_script("window.scrollTo(0, 0)")
        driver.refresh()  # the page as a reader first sees it
        shot = tmp_path / "site.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("CMBENCH_SCREENSHOT_TO"):  # the README's picture: docs/site.png
            shutil.copy(shot, os.environ["CMBENCH_SCREENSHOT_TO"])
        print(f"browser test: {time.time() - t0:.1f} s; screenshot {shot}")
    finally:
        driver.quit()


@needs_browser
def test_hostile_results_run_no_script_in_the_site(tmp_path):
    """The hostile corpus (tests/hostile.py) rendered as a site and opened in Chromium: every
    page, hover tip and on-demand matrix built, and no injected handler ran (checked in the
    DOM: a screenshot cannot show it)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from . import hostile

    results = hostile.build(tmp_path / "run")
    index = render_site(results, tmp_path / "site", recs=_valid(results))
    driver = _browser()
    try:
        for page in (index, index.parent / hostile.SUITE / "index.html"):
            driver.get(page.as_uri())
            for point in driver.find_elements(By.CSS_SELECTOR, "#curves circle")[:20]:
                ActionChains(driver).move_to_element(point).perform()
            for details in driver.find_elements(By.CSS_SELECTOR, "details[data-label]"):
                driver.execute_script("arguments[0].open = true", details)
            time.sleep(0.5)  # the toggle handlers run as tasks after the clicks
            labels = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#legend span")]
            if page != index:
                assert any(lb.startswith("hostile-") for lb in labels)  # the hostile rows are shown, as text
                assert len(driver.find_elements(By.CSS_SELECTOR, "#board tbody tr")) >= 12
            assert driver.execute_script("return window.__pwned === undefined") is True
            injected = driver.execute_script(
                "return document.querySelectorAll('img[src=\"x\"], svg[onload], [onerror], [onload]').length"
            )
            assert injected == 0
            assert len(driver.find_elements(By.TAG_NAME, "script")) == 2  # the page's data and its own script
    finally:
        driver.quit()


def _valid(results):
    from cmbench.results import load_results

    return load_results(results, on_bad=lambda path, why: None)


def _browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--window-size=1400,1000",
        "--proxy-server=http://127.0.0.1:9",
        "--proxy-bypass-list=<-loopback>",  # the network is blocked
        "--host-resolver-rules=MAP * ~NOTFOUND",
    ):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
