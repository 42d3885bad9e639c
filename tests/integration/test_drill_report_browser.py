"""The drill report in a real headless browser (Debian's Chromium): the page renders, its images load, the step
table shows the five steps in order, the verdict line is there. (The page of a drill stopped early is checked as
HTML in tests/unit/test_drill_report.py: a second browser launch would cost seconds for the same mechanism.)"""
from __future__ import annotations

import pytest

from standbyctl.drill.report import write_report
from tests.browser import open_reports
from tests.drill_fixtures import STEP_IDS, build_drill_folder, drill_steps

pytestmark = pytest.mark.browser


def test_drill_report_renders_with_its_images_steps_and_verdict(tmp_path):
    report = write_report(build_drill_folder(tmp_path))
    # The same page with its image gone, in the same browser: proves the check below would see a broken image.
    broken = tmp_path / "broken.html"
    broken.write_text(report.read_text(encoding="utf-8").replace("src='timeline.png'", "src='gone.png'"),
                      encoding="utf-8")
    page, without_image = open_reports([report, broken])
    assert [(img.src, img.natural_width) for img in without_image.images] == [("gone.png", 0)]
    assert [url.rsplit("/", 1)[-1] for url in without_image.failed_requests] == ["gone.png"]

    assert page.title.startswith("Disaster-recovery drill")
    assert page.verdict.startswith("FAIL: step 2 (org-restructure) freeze 2.35 s")
    assert [img.src for img in page.images] == ["timeline.png"]
    assert all(img.natural_width > 0 for img in page.images), page.images
    assert [row[0] for row in page.steps] == ["1", "2", "3", "4", "5"]
    assert [row[1] for row in page.steps] == [s["title"] for s in drill_steps()]
    assert [row[1].split("\n")[-1].split(" · ")[0] for row in page.steps_full] == list(STEP_IDS)
    assert [row[-1] for row in page.slos] == ["PASS", "FAIL", "PASS", "PASS", "NOT MEASURED"]
    assert page.failed_requests == [] and page.console_errors == []

