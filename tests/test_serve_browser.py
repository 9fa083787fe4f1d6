"""Several clinicians at once, in real Chromium against a real `streamlit run`: two sessions upload
different films at the same moment and each is shown its own film's verdict and panels (the
containers are keyed by the file's hash); a next film replaces the panels; and the server process,
asked directly (tests/server_probe.py), has imported neither TensorFlow nor Keras nor lime while
its explanation worker, a process of its own at a lower priority, did the explaining (the PDF
report, built in the server when its button is clicked, does not change that)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from tests import server_probe
from tests.browser_helpers import (CHROMIUM_MISSING, SHOWN_FILMS, chromium, have_chromium, new_page,
                                   no_exception, probability_text, streamlit_server)
from xray_core import imaging

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not have_chromium(), reason=CHROMIUM_MISSING)]

# True once the film's five panels are loaded, or as soon as a verdict and an explanation of
# different films are on screen together (kept in window.__mixed for the assert).
PANELS = """(sha) => {
  const shown = (%s)();
  if (new Set(shown.map(s => s.film)).size > 1) {
    (window.__mixed = window.__mixed || []).push(shown);
    return true;
  }
  return shown.some(s => s.kind === 'explained' && s.film === sha && s.loaded >= 5);
}""" % SHOWN_FILMS


def enlarged(path: Path, folder: Path) -> Path:
    """The synthetic 48 px film at 160 px, a size the input gate accepts."""
    from PIL import Image

    out = folder / f"{path.parent.name}-{path.stem}.png"
    Image.fromarray(imaging.decode(path)).resize((160, 160), Image.BILINEAR).save(out)
    return out


def film_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def wait_for_panels(page, path: Path) -> None:
    """Until the film's own five panels are loaded; fails if a verdict and the explanation of
    another film were shown together meanwhile."""
    sha = film_hash(path)
    page.evaluate("() => { window.__mixed = []; }")
    page.wait_for_function(PANELS, arg=sha, timeout=180_000, polling=50)
    assert page.evaluate("() => window.__mixed") == []
    assert sorted((s["kind"], s["film"]) for s in page.evaluate(SHOWN_FILMS)) == [("explained", sha), ("verdict", sha)]
    assert page.locator(f'.st-key-verdict-{sha} [data-testid="stMetric"]').count() == 4
    notes = page.locator('[data-testid="stCaptionContainer"]', has_text=" · LIME: ").first.inner_text()
    assert notes.startswith(path.name)


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def nice(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def test_two_sessions_at_once_each_see_their_own_film_and_the_server_never_loads_tensorflow(
        synthetic_dataset, tiny_run, tmp_path):
    runs_root, run_id = tiny_run
    models = tmp_path / "models"
    shutil.copytree(runs_root / run_id, models / run_id)
    probe = tmp_path / "probe"
    probe.mkdir()
    films = [enlarged(sorted((synthetic_dataset / "test" / c).iterdir())[i], tmp_path)
             for c, i in (("NORMAL", 0), ("PNEUMONIA", 0), ("PNEUMONIA", 1))]
    env = dict(os.environ, XRAY_DATA_DIR=str(synthetic_dataset), XRAY_MODELS_DIR=str(models),
               XRAY_CACHE_DIR=str(tmp_path / "cache"), XRAY_PROBE_DIR=str(probe))
    with streamlit_server(env=env, log_path=tmp_path / "streamlit.log", launcher="tests.server_probe") as base, \
            chromium() as browser:
        sessions = [new_page(browser, timeout_ms=180_000) for _ in range(2)]
        for _, page in sessions:
            page.goto(base)
            page.locator('[data-testid="stFileUploaderDropzoneInput"]').wait_for(state="attached")
        for (_, page), path in zip(sessions, films):
            page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(path))
        for (_, page), path in zip(sessions, films):
            wait_for_panels(page, path)
            no_exception(page)
            assert page.locator('[data-testid="stMetric"]', has_text="Probability of pneumonia").locator(
                '[data-testid="stMetricValue"]').inner_text().strip() == probability_text(models, run_id, path)

        # The first session moves on to another film: its panels are that film's, the old ones gone.
        page = sessions[0][1]
        page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(films[2]))
        wait_for_panels(page, films[2])
        assert {s["film"] for s in sessions[1][1].evaluate(SHOWN_FILMS)} == {film_hash(films[1])}

        # The report is built when asked for, in the server, from the explanation the page shows.
        with page.expect_download() as download:
            page.get_by_role("button", name="Download report (PDF)").click()
        assert Path(download.value.path()).read_bytes().startswith(b"%PDF")

        server = server_probe.ask(probe)
        heavy = sorted(m for m in server["modules"] if m.split(".")[0] in ("tensorflow", "keras", "lime"))
        assert heavy == [], heavy
        assert "xray_core.serving.service" in server["modules"]  # the page did use the workers
        workers = [pid for pid in children(server["pid"])
                   if b"xray_core.serving.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(workers) == 1  # the default: one explanation worker
        assert nice(workers[0]) - nice(server["pid"]) == 10
        assert "libtensorflow" in Path(f"/proc/{workers[0]}/maps").read_text()  # Grad-CAM ran there
        assert "libtensorflow" not in Path(f"/proc/{server['pid']}/maps").read_text()
        for context, _ in sessions:
            context.close()
