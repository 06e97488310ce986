"""The steward's QC report (flows.report) on the demo pipeline's real output.

Here rather than in tests/curation because the curated demo (``curated_demo``,
a whole ``curate`` run on the phantom sites) is a fixture of the flow tests.
The QC pictures are drawn by calling :func:`curation.qc.render_case_qc` on
every prepared case of that state, as the QC task of the flows will.
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from anonymization.redact import public_sentence
from curation.atomic import sha256_file
from curation.config import Config, load_config
from curation.errors import RejectReason
from curation.labels import load_release_labels, load_site_tables
from curation.model import CaseQC, ConvertedCase, Phase, PreparedCase, Rejection
from curation.qc import QCStage
from curation.registry import Registry, format_case_number
from curation.stage import REJECTED, read_record, write_record
from curation.state import StatePaths, load_sensitive_values, site_outcomes
from flows.audit import AuditLog, read_head
from flows.report import site_summary, write_report
from tests.flows.conftest import CuratedDemo


def render_all_qc(config: Config) -> dict[str, CaseQC]:
    """The QC stage on every prepared case of the state, as a build with the stage will run it."""
    state = StatePaths(config.release.state_dir)
    release_labels = load_release_labels(config.release.labels)
    tables = load_site_tables(config.sites, release_labels)
    out = {}
    for site in config.sites:
        stage = QCStage(state=state, release_labels=release_labels, source_table=tables[site.id])
        for case in site_outcomes(state, site.id):
            if isinstance(case, ConvertedCase) and state.prepared_record(case.key).is_file():
                prepared = read_record(state.prepared_record(case.key), PreparedCase)
                assert isinstance(prepared, PreparedCase), prepared
                result = stage.run((case, prepared))
                assert isinstance(result.outcome, CaseQC), result.outcome
                out[case.key] = result.outcome
    return out


@dataclasses.dataclass(frozen=True)
class Reported:
    demo: CuratedDemo
    qc: dict[str, CaseQC]
    index: Path

    @property
    def page(self) -> str:
        return self.index.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def reported(curated_demo: CuratedDemo) -> Reported:
    qc = render_all_qc(curated_demo.config)
    return Reported(curated_demo, qc, write_report(curated_demo.config))


def outcomes(demo: CuratedDemo) -> tuple[list[ConvertedCase], list[Rejection]]:
    converted, rejected = [], []
    for site in demo.config.sites:
        for outcome in site_outcomes(demo.state, site.id):
            (converted if isinstance(outcome, ConvertedCase) else rejected).append(outcome)
    return converted, rejected


def identifying_values(state: StatePaths) -> set[str]:
    """Every UID, PatientID and recorded identifying value the state knows (none may reach the page)."""
    values = set(load_sensitive_values(state.root))
    for index_path in (state.root / "sites").glob("*/index.json"):
        for study in json.loads(index_path.read_text())["studies"]:
            values |= {study["StudyInstanceUID"], study["PatientID"]}
            for series in study["series"]:
                values |= {series["SeriesInstanceUID"], series["FrameOfReferenceUID"]}
    return {v for v in values if len(v) >= 3}


def roots(config: Config) -> list[str]:
    folders = [config.release.state_dir, config.release.output_dir, config.path.parent]
    for site in config.sites:
        folders += [site.dicom_dir, site.segmentations_dir, site.lesions_dir, site.clinical_sheet]
    return [str(f) for f in folders if f is not None]


# ---------------------------------------------------------------------------


def test_report_page_holds_the_state(reported: Reported) -> None:
    demo, page = reported.demo, reported.page
    converted, rejected = outcomes(demo)
    assert reported.index == demo.state.root / "report" / "index.html"

    # per site: seen, converted, rejected by reason, released, withdrawn
    summary = {row.site: row for row in site_summary(demo.config)}
    for site in demo.config.sites:
        row = summary[site.id]
        mine = [o for o in (*converted, *rejected) if o.site == site.id]
        assert row.converted == sum(1 for o in mine if isinstance(o, ConvertedCase)) == 1
        assert row.rejected == {r.reason.value: 1 for r in rejected if r.site == site.id}
        assert row.studies_seen == len(mine) and row.released == 1 and row.withdrawn == 0
        assert (f"<tr><td>{site.id}</td><td class=n>{row.studies_seen}</td><td class=n>{row.converted}</td>"
                in page)

    # every released case, by number, with its pictures; no UID, PatientID or path anywhere
    manifest = json.loads(demo.state.release_manifest(demo.zip_path.name).read_text())
    numbers = sorted(c["case"] for c in manifest["cases"])
    assert numbers == ["0001", "0002", "0003"]
    for number in numbers:
        assert re.search(rf'<h3>Case {number} <span class="status-released">released</span>', page)
    for value in identifying_values(demo.state):
        assert value not in page, value
    assert str(demo.root) not in page

    # every rejection: reason code and its sentence, blanked
    hidden = identifying_values(demo.state)
    for rejection in rejected:
        sentence = public_sentence(rejection.message, hidden, roots(demo.config))
        assert f'data-reason="{rejection.reason.value}"' in page
        assert f'<td class="sentence">{html.escape(sentence)}</td>' in page
        assert rejection.message not in page  # each names a series UID or a path
    for reason in RejectReason:  # advice for every code, the rejections' codes first
        assert f'id="advice-{reason.value}"' in page

    # the pictures are in the report folder, referenced relatively
    links = re.findall(r'(?:src|href)="([^"#]+)"', page)
    assert len(links) == 2 * sum(len(q.images) for q in reported.qc.values()) > 0
    for link in links:
        assert not link.startswith(("/", "..", "http", "file:")), link
        assert (reported.index.parent / link).is_file(), link

    # the last release
    assert demo.zip_path.name in page and sha256_file(demo.zip_path) in page
    assert re.search(r'<th>verify</th><td><span class="good">ok</span>', page)
    count, head = read_head(demo.state.audit_log)
    assert count == len(AuditLog(demo.state.audit_log).records()) and f"{count} records" in page and head in page


def test_withdrawn_held_back_escaped_and_copied_elsewhere(curated_demo: CuratedDemo, tmp_path: Path) -> None:
    root = tmp_path / "demo"
    shutil.copytree(curated_demo.root, root)
    config_path = root / curated_demo.config_path.name
    # a site indication a browser would read as markup
    text = config_path.read_text(encoding="utf-8")
    config_path.write_text(text.replace('indication = "lymphoma"', 'indication = "<b>lymphoma</b> & \\"stage\\""',
                                        1), encoding="utf-8")
    config = load_config(config_path)
    state = StatePaths(config.release.state_dir)
    render_all_qc(config)
    registry = Registry(state.registry)
    registry.withdraw(1, "consent withdrawn")
    # case 0003 held back by a later build's prepare stage, as its record says
    entry = next(e for e in registry.entries() if e.number == 3)
    key = next(o.key for s in config.sites for o in site_outcomes(state, s.id)
               if o.StudyInstanceUID == entry.StudyInstanceUID)
    message = (f"study {entry.StudyInstanceUID}: no brain in {config.sites[2].segmentations_dir}/x/Organs.nii.gz: "
               "the head is not in the scan")
    write_record(state.prepared_record(key), Rejection(
        site=entry.site, StudyInstanceUID=entry.StudyInstanceUID, reason=RejectReason.HEAD_NOT_FOUND,
        message=message, phase=Phase.BUILD, stage="prepare", fingerprint="0" * 64), status=REJECTED)
    elsewhere = tmp_path / "report-copy"

    page = write_report(config, out_dir=elsewhere).read_text(encoding="utf-8")

    assert "&lt;b&gt;lymphoma&lt;/b&gt; &amp; &quot;stage&quot;" in page and "<b>lymphoma</b>" not in page
    assert '<h3>Case 0001 <span class="status-withdrawn">withdrawn</span>' in page
    assert '<h3>Case 0003 <span class="status-held">held back: head-not-found</span>' in page
    assert ('<td>prepare (held back)</td><td><a href="#advice-head-not-found"><code>head-not-found</code></a></td>'
            '<td class="sentence">study &lt;id&gt;: no brain in &lt;path&gt;: the head is not in the scan</td>'
            in page)
    summary = {row.site: row for row in site_summary(config)}
    assert summary[entry.site].rejected["head-not-found"] == 1
    assert summary["leipzig"].withdrawn == 1
    # pictures copied next to the page, which references nothing outside its folder
    links = re.findall(r'(?:src|href)="([^"#]+)"', page)
    assert links and all((elsewhere / link).is_file() and not link.startswith("..") for link in links)
    assert all((elsewhere / "qc").resolve() in (elsewhere / link).resolve().parents for link in links)


# ---------------------------------------------------------------------------
# in a real browser


def _browser():
    """Headless Debian chromium through Selenium and Debian's chromedriver (nothing downloaded)."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        message = "Debian's chromium and chromium-driver are needed (.ci/run installs them)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1600", "--hide-scrollbars"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


_LOAD_ALL = """
const done = arguments[arguments.length - 1];
const thumbs = Array.from(document.images);
thumbs.forEach(function (img) { img.loading = "eager"; });
const links = Array.from(document.querySelectorAll(".thumbs a")).map(function (a) { return a.href; });
const full = links.map(function (href) {
  return new Promise(function (resolve) {
    const img = new Image();
    img.onload = function () { resolve([href, img.naturalWidth, img.naturalHeight]); };
    img.onerror = function () { resolve([href, 0, 0]); };
    img.src = href;
  });
});
const shown = thumbs.map(function (img) {
  return (img.complete ? Promise.resolve() : new Promise(function (resolve) {
    img.addEventListener("load", resolve); img.addEventListener("error", resolve);
  })).then(function () { return [img.src, img.naturalWidth, img.naturalHeight]; });
});
Promise.all([Promise.all(shown), Promise.all(full)]).then(done);
"""


def test_report_in_a_headless_browser(reported: Reported, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    demo = reported.demo
    converted, rejected = outcomes(demo)
    browser = _browser()
    try:
        browser.set_script_timeout(60)
        browser.get(reported.index.as_uri())
        assert browser.title == f"QC report: {demo.config.release.name} {demo.config.release.version}"

        # every thumbnail and every full-size picture it links to loads
        thumbs, full = browser.execute_async_script(_LOAD_ALL)
        pictures = sum(len(q.images) for q in reported.qc.values())
        assert len(thumbs) == len(full) == pictures > 0
        for src, width, height in (*thumbs, *full):
            assert width > 0 and height > 0, src
        # nothing is fetched from anywhere but the report folder: no script, style or frame from outside
        urls = browser.execute_script(
            "return Array.from(document.querySelectorAll('[src],[href]'))"
            ".map(function (e) { return e.src || e.href; });")
        assert len(urls) == 2 * pictures + len(rejected)  # thumbnails, their links, links to the advice
        assert all(url.startswith(reported.index.parent.as_uri() + "/") for url in urls)

        # every released case number and every rejection is on the page
        for number in (format_case_number(n) for n in (1, 2, 3)):
            heading = browser.find_element(By.ID, f"case-{number}").find_element(By.TAG_NAME, "h3").text
            assert heading == f"Case {number} released"
        rows = browser.find_elements(By.CSS_SELECTOR, "#rejections tr[data-reason]")
        assert sorted(r.get_attribute("data-reason") for r in rows) == sorted(r.reason.value for r in rejected)
        text = browser.find_element(By.TAG_NAME, "body").text
        hidden = identifying_values(demo.state)
        for rejection in rejected:
            assert public_sentence(rejection.message, hidden, roots(demo.config)) in text

        # the filters: one site, then one reason
        site = demo.config.sites[1].id
        Select(browser.find_element(By.ID, "filter-site")).select_by_value(site)
        visible = [e for e in browser.find_elements(By.CSS_SELECTOR, "[data-filter]") if e.is_displayed()]
        assert visible and {e.get_attribute("data-site") for e in visible} == {site}
        assert browser.find_element(By.ID, "cases-shown").text == str(
            sum(1 for c in converted if c.site == site))
        Select(browser.find_element(By.ID, "filter-site")).select_by_value("")
        reason = rejected[0].reason.value
        Select(browser.find_element(By.ID, "filter-reason")).select_by_value(reason)
        visible = [e for e in browser.find_elements(By.CSS_SELECTOR, "[data-filter]") if e.is_displayed()]
        assert [e.get_attribute("data-reason") for e in visible] == [
            r.reason.value for r in rejected if r.reason.value == reason]
        Select(browser.find_element(By.ID, "filter-reason")).select_by_value("")

        # no console error, and a picture of the page
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        browser.set_window_size(1280, 2300)  # the summary, the release, the rejections and a case
        browser.execute_script("window.scrollTo(0, 0);")
        shot = tmp_path / "report.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        if os.environ.get("PETCT_REPORT_SCREENSHOT"):  # how docs/report-screenshot.png is made
            shutil.copyfile(shot, os.environ["PETCT_REPORT_SCREENSHOT"])
    finally:
        browser.quit()
