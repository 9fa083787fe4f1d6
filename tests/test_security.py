"""Safe by default when served (issue 15): localhost only, allowed folders, viewer mode, sign-in,
limits, privacy. Real parts: a real `streamlit run`, real HTTP servers on 127.0.0.1, real job
submissions and worker locks, real CLI processes."""

from __future__ import annotations

import fcntl
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.apptest_helpers import APP, wait_for
from tests.browser_helpers import streamlit_server
from xray_core import fileio, imaging, jobs, scoring, settings
from xray_core.scoring import uploads

PROJECT = Path(__file__).resolve().parents[1]
TRAIN_OPTIONS = {"arch": "baseline", "data": "/nowhere", "epochs": 1, "batch_size": 8,
                 "image_size": 16, "channels": 1, "learning_rate": 1e-3, "seed": 0}


@pytest.fixture(autouse=True)
def _no_admin_settings(monkeypatch, tmp_path_factory):
    """Each test starts from the defaults: no secrets file, no administrator variables (but the
    explanation workers, which conftest switches off in the fast tier)."""
    monkeypatch.setenv("XRAY_SECRETS_FILE", str(tmp_path_factory.getbasetemp() / "no-secrets.toml"))
    for name in ("XRAY_MODE", "XRAY_ALLOWED_ROOTS", "XRAY_DOWNLOAD_HOSTS",
                 "XRAY_DOWNLOAD_PRIVATE_NETWORKS", "XRAY_DATA_DIR", "XRAY_MODELS_DIR",
                 *(f"XRAY_MAX_{k.upper()}" for k in settings.DEFAULT_LIMITS if k != "explain_workers")):
        monkeypatch.delenv(name, raising=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listeners(port: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp{,6}) of sockets listening on `port`."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, state = fields[1], fields[3]
            if state == "0A" and int(address.rsplit(":", 1)[1], 16) == port:
                found.append(address.rsplit(":", 1)[0])
    return found


def _non_loopback_address() -> str | None:
    """This machine's address on its default route (no packet is sent), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: routing only
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


# ------------------------------------------------------------------------ localhost by default


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads Linux's /proc/net/tcp")
def test_streamlit_run_with_the_project_config_listens_on_loopback_only(tmp_path):
    env = dict(os.environ, HOME=str(tmp_path))  # no user-level config.toml interferes
    # no --server.address: the project's .streamlit/config.toml decides where it listens
    with streamlit_server(env=env, address=None) as base:
        port = int(base.rsplit(":", 1)[1])
        listeners = _listeners(port)
        assert listeners and set(listeners) == {"0100007F"}, listeners  # 127.0.0.1, no 0.0.0.0/::
        other = _non_loopback_address()
        if other is not None:
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((other, port), timeout=5).close()
        # CORS protection on: a foreign origin gets no Access-Control-Allow-Origin.
        request = urllib.request.Request(f"{base}/_stcore/health", headers={"Origin": "http://evil.example"})
        with urllib.request.urlopen(request, timeout=5) as r:
            assert r.headers.get("Access-Control-Allow-Origin") is None


# ----------------------------------------------------------------------------- allowed roots


def test_check_allowed_accepts_folders_under_a_root_and_resolves_them(tmp_path):
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "inside-link").symlink_to(root / "a")
    roots = (root,)
    assert fileio.check_allowed(root / "a" / "b", what="dataset folder", roots=roots) == (root / "a" / "b").resolve()
    assert fileio.check_allowed(root / "not-yet", what="download folder", roots=roots) == (root / "not-yet").resolve()
    assert fileio.check_allowed(root / "inside-link" / "b", what="x", roots=roots) == (root / "a" / "b").resolve()
    assert fileio.check_allowed(str(root / "a" / ".." / "a"), what="x", roots=roots) == (root / "a").resolve()


@pytest.mark.parametrize("make, words", [
    (lambda root, out: root / ".." / "outside", "climbs out of the allowed folders with '..'"),
    (lambda root, out: out, "is outside the allowed folders"),
    (lambda root, out: root / "escape", "leads through a symbolic link"),
    (lambda root, out: root / "escape" / "deeper", "leads through a symbolic link"),
])
def test_check_allowed_refuses_escapes_and_touches_nothing(tmp_path, make, words):
    root, out = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    out.mkdir()
    (root / "escape").symlink_to(out)
    with pytest.raises(fileio.PathNotAllowed, match=words) as err:
        fileio.check_allowed(make(root, out), what="dataset folder", roots=(root,))
    assert "nothing was read or written" in str(err.value) and str(root.resolve()) in str(err.value)
    assert list(out.iterdir()) == []


def test_allowed_roots_defaults_and_what_the_administrator_adds(tmp_path, monkeypatch):
    defaults = [Path(p).resolve() for p in fileio.allowed_roots()]
    assert (PROJECT / "data").resolve() in defaults and (PROJECT / "trained_models").resolve() in defaults
    shared = PROJECT.parent / "shared" / "data"
    assert (shared.resolve() in defaults) == shared.is_dir()
    with pytest.raises(fileio.PathNotAllowed):
        fileio.check_allowed(tmp_path / "a", what="dataset folder")
    monkeypatch.setenv("XRAY_ALLOWED_ROOTS", os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")]))
    assert fileio.check_allowed(tmp_path / "b" / "x", what="dataset folder") == (tmp_path / "b" / "x").resolve()
    monkeypatch.delenv("XRAY_ALLOWED_ROOTS")
    secrets = tmp_path / "secrets.toml"
    secrets.write_text(f'[xray]\nallowed_roots = ["{tmp_path / "c"}"]\n')
    monkeypatch.setenv("XRAY_SECRETS_FILE", str(secrets))
    assert fileio.check_allowed(tmp_path / "c", what="dataset folder") == (tmp_path / "c").resolve()
    with pytest.raises(fileio.PathNotAllowed):
        fileio.check_allowed(tmp_path / "b", what="dataset folder")


def _app(monkeypatch, page: str | None = None, **env) -> AppTest:
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


@pytest.mark.parametrize("sent, kept", [
    ("site.zip", "site.zip"), ("St Olaf 2026 (ward 3).zip", "St Olaf 2026 (ward 3).zip"), ("r\u00f6ntgen.zip", "r\u00f6ntgen.zip"),
    ("../../etc/passwd", "passwd"), ("C:\\Users\\ward\\site.zip", "site.zip"), ("..", "upload.zip"), ("", "upload.zip"),
    (".hidden.zip", "hidden.zip"), ("a\0b.zip", "ab.zip"), ("x" * 300 + ".zip", "x" * 196 + ".zip"),
    ("\u00f6" * 150 + "a.zip", "\u00f6" * 97 + "a.zip")])  # a cut character is dropped
def test_an_uploaded_file_keeps_a_safe_form_of_its_own_name(sent, kept):
    """Worklist films and Validate's zip are written under their own names, never outside their folder."""
    assert fileio.upload_file_name(sent, "upload.zip") == kept
    assert len(kept.encode()) <= fileio.MAX_NAME_BYTES


@pytest.mark.parametrize("typed", ["/etc", "data/../../", "{root}/escape"])
def test_the_sidebar_refuses_folders_outside_the_roots_and_the_page_reads_nothing(
        monkeypatch, synthetic_dataset, tmp_path, typed):
    root = tmp_path / "root"  # an allowed root holding a symbolic link that points out of it
    root.mkdir()
    (root / "escape").symlink_to(synthetic_dataset.parent)
    typed = typed.format(root=root)
    at = _app(monkeypatch, XRAY_DATA_DIR=synthetic_dataset, XRAY_MODELS_DIR=tmp_path / "models",
              XRAY_ALLOWED_ROOTS=root)
    at.sidebar.text_input(key="_data_dir_input").set_value(typed)
    at.sidebar.text_input(key="_models_dir_input").set_value("/")
    at.run()
    assert not at.exception
    assert "nothing was read or written" in at.session_state["_data_dir_refused"]
    assert [e.value for e in at.sidebar.error] == [at.session_state["_data_dir_refused"],
                                                   at.session_state["_models_dir_refused"]]
    assert at.session_state["data_dir"] == str(synthetic_dataset)  # the last allowed folder stays
    assert at.session_state["models_dir"] == str(tmp_path / "models")
    at.switch_page("pages/dataset.py").run()
    assert any("84 images" in c.value for c in at.caption)  # still the allowed dataset
    # The page checks too: a folder that got into the session some other way is refused.
    at.session_state["data_dir"] = typed
    at.run()
    assert any("nothing was read or written" in e.value for e in at.error) and not at.dataframe


def test_the_dataset_page_refuses_a_download_folder_outside_the_roots(monkeypatch, tmp_path):
    data_dir = tmp_path / "allowed" / "chest_xray"
    at = _app(monkeypatch, "pages/dataset.py", XRAY_DATA_DIR=data_dir, XRAY_MODELS_DIR=tmp_path / "m")
    outside = tmp_path / "outside"
    at.text_input(key="dataset_download_dest").set_value(str(outside))
    at.button(key="dataset_download").click().run()
    assert not at.exception
    assert any("download folder" in e.value and "outside the allowed folders" in e.value for e in at.error)
    assert not outside.exists()


# ---------------------------------------------------------------------------- mirror URLs


class _CountingHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's naming
        self.server.hits.append(self.path)
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        """Quiet."""


def test_the_dataset_page_refuses_a_mirror_inside_the_network(monkeypatch, tmp_path):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CountingHandler)
    httpd.hits = []
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        dest = tmp_path / "data"
        at = _app(monkeypatch, "pages/dataset.py", XRAY_DATA_DIR=dest / "chest_xray",
                  XRAY_MODELS_DIR=tmp_path / "m", XRAY_ALLOWED_ROOTS=dest)
        url = f"http://127.0.0.1:{httpd.server_address[1]}/ChestXRay2017.zip"
        at.text_input(key="dataset_download_url").set_value(url)
        at.button(key="dataset_download").click().run()
        assert any("not one of them" in e.value for e in at.error), [e.value for e in at.error]
        monkeypatch.setenv("XRAY_DOWNLOAD_HOSTS", "127.0.0.1")  # the host allowed, its network not
        at.button(key="dataset_download").click().run()
        assert any("loopback" in e.value for e in at.error), [e.value for e in at.error]
        assert httpd.hits == []
        assert not (dest / "chest_xray").exists()
    finally:
        httpd.shutdown()
        httpd.server_close()


# ---------------------------------------------------------------------------------- viewer mode


def test_viewer_mode_hides_train_and_download(monkeypatch, tmp_path):
    at = _app(monkeypatch, XRAY_MODE="viewer",
              XRAY_DATA_DIR=tmp_path / "none" / "chest_xray", XRAY_MODELS_DIR=tmp_path / "m")
    assert any("Viewer mode" in c.value for c in at.sidebar.caption)
    at.switch_page("pages/dataset.py").run()
    assert [t.value for t in at.title] == ["Dataset"]
    keys = {w.key for w in (*at.button, *at.text_input)}
    assert "dataset_download" not in keys and "dataset_download_url" not in keys
    assert any("viewer mode" in i.value for i in at.info)
    # Train and Worklist are not pages of the navigation (each also refuses by itself: below).
    for page in ("pages/train.py", "pages/worklist.py"):
        with pytest.raises(ValueError, match="Could not find a navigation page"):
            at.switch_page(page)
    # The same app in full mode offers both.
    monkeypatch.setenv("XRAY_MODE", "full")
    at = _app(monkeypatch, "pages/dataset.py")
    assert "dataset_download" in {b.key for b in at.button}
    at.switch_page("pages/train.py").run()
    assert [t.value for t in at.title] == ["Train"]


@pytest.mark.parametrize("page, words, write_key", [
    ("train.py", "Training is switched off", "train_start"),
    ("worklist.py", "Worklists are switched off", "worklist_start"),
])
def test_a_page_that_writes_refuses_viewer_mode_by_itself(monkeypatch, page, words, write_key):
    """Run alone with the entry script's mark set, as if a navigation had let it through, Train and
    Worklist still refuse in viewer mode (with no session settings they would read the project's
    trained_models/, whose bundled model the Worklist offers to score with)."""
    from app.entry import ENTRY_MARK

    for mode, refused in (("viewer", True), ("full", False)):
        monkeypatch.setenv("XRAY_MODE", mode)
        at = AppTest.from_file(str(PROJECT / "pages" / page), default_timeout=120)
        at.session_state[ENTRY_MARK] = True
        at.run()
        assert not at.exception, at.exception
        assert any(words in i.value for i in at.info) == refused
        assert (write_key in {b.key for b in at.button}) == (not refused)


def test_viewer_mode_refuses_job_submission_in_the_library(monkeypatch, tmp_path):
    monkeypatch.setenv("XRAY_MODE", "viewer")
    with pytest.raises(settings.ViewerModeError, match="viewer mode"):
        jobs.submit_training(tmp_path, TRAIN_OPTIONS, start=False)
    films = tmp_path / "films"  # a worklist of a server folder, and resuming one, are refused too
    films.mkdir()
    from PIL import Image

    Image.new("L", (64, 64), 90).save(films / "film.png")
    with pytest.raises(settings.ViewerModeError, match="viewer mode"):
        scoring.submit_job(tmp_path / "models", "default", films, start=False)
    with pytest.raises(settings.ViewerModeError, match="viewer mode"):
        scoring.resume_job(tmp_path / "models", "job-1")
    assert list(tmp_path.iterdir()) == [films]
    monkeypatch.setenv("XRAY_MODE", "admin")
    with pytest.raises(settings.SettingsError, match="one of full, viewer"):
        settings.mode()


@pytest.mark.parametrize("argv", [
    pytest.param(["train", "--arch", "baseline", "--epochs", "1", "--data", "{data}", "--runs-dir", "{runs}"],
                 marks=pytest.mark.slow),  # a training command, refused
    ["download", "--dest", "{runs}", "--url", "http://127.0.0.1:9/x.zip"],
    ["fit-gate", "{runs}/some-run", "--data", "{data}"],
])
def test_the_cli_refuses_writing_commands_in_viewer_mode(tmp_path, synthetic_dataset, argv):
    runs_dir = tmp_path / "runs"
    argv = [a.format(data=synthetic_dataset, runs=runs_dir) for a in argv]
    env = dict(os.environ, XRAY_MODE="viewer", PYTHONPATH=str(PROJECT))
    proc = subprocess.run([sys.executable, "-m", "xray_core", *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "viewer mode" in proc.stderr and "Traceback" not in proc.stderr
    assert not runs_dir.exists()
    # A reading command still works in viewer mode.
    proc = subprocess.run([sys.executable, "-m", "xray_core", "dataset", "--data", str(synthetic_dataset)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------------------------- sign-in

AUTH = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "test-only-secret",
        "client_id": "xray-dashboard", "client_secret": "test-only",
        "server_metadata_url": "https://idp.hospital.example/realms/radiology/.well-known/openid-configuration"}


def test_with_auth_configured_a_signed_out_visitor_sees_only_the_sign_in(monkeypatch, synthetic_dataset, tmp_path):
    monkeypatch.setenv("XRAY_DATA_DIR", str(synthetic_dataset))
    monkeypatch.setenv("XRAY_MODELS_DIR", str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=120)
    at.secrets["auth"] = AUTH
    at.user = {"is_logged_in": False}
    at.run()
    assert not at.exception
    assert [b.key for b in at.button] == ["auth_sign_in"]
    assert not at.sidebar.text_input and "Diagnose" not in [t.value for t in at.title]
    with pytest.raises(ValueError, match=r"Known pages: \['Sign in'\]"):
        at.switch_page("pages/dataset.py")  # the sign-in page is the only page there is

    at.user = {"is_logged_in": True, "name": "Dr Ada Lovelace", "email": "ada@hospital.example"}
    at.run()
    assert not at.exception
    shown = " ".join(m.value for m in at.sidebar.markdown)
    assert "Dr Ada Lovelace" in shown and "ada@hospital.example" in shown
    assert "auth_sign_out" in {b.key for b in at.sidebar.button}
    at.switch_page("pages/dataset.py").run()
    assert [t.value for t in at.title] == ["Dataset"] and at.dataframe


def test_without_auth_configured_the_app_opens_without_sign_in(monkeypatch, tmp_path):
    at = _app(monkeypatch, XRAY_MODELS_DIR=tmp_path)
    assert "auth_sign_in" not in {b.key for b in at.button}
    assert [t.value for t in at.title] == ["Diagnose"]


# ------------------------------------------------------------------------------------- limits


@pytest.fixture
def busy_slot(tmp_path):
    """A models folder whose only worker slot is held, as by a worker busy with a training."""
    models = tmp_path / "models"
    (models / jobs.QUEUE_DIR).mkdir(parents=True)
    lock = open(models / jobs.QUEUE_DIR / "worker.lock", "a")
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    yield models
    lock.close()


def test_training_cap_one_running_three_waiting_with_real_submissions(busy_slot, monkeypatch):
    models = busy_slot
    assert jobs.training_load(models) == (1, 0)
    queued = [jobs.submit_training(models, dict(TRAIN_OPTIONS, seed=i)) for i in range(3)]
    assert [j["run_id"] for j in jobs.queued_jobs(models)] == queued
    with pytest.raises(jobs.CapacityError, match="at most 1 training at a time with 3 waiting"):
        jobs.submit_training(models, TRAIN_OPTIONS)
    assert len(jobs.queued_jobs(models)) == 3  # nothing written by the refused one
    # Configurable: one more waiting place, and the fourth is accepted.
    monkeypatch.setenv("XRAY_MAX_QUEUED_TRAININGS", "4")
    jobs.submit_training(models, TRAIN_OPTIONS)
    assert len(jobs.queued_jobs(models)) == 4
    # Removing one frees a place under the default.
    monkeypatch.delenv("XRAY_MAX_QUEUED_TRAININGS")
    with pytest.raises(jobs.CapacityError):
        jobs.submit_training(models, TRAIN_OPTIONS)
    jobs.cancel_queued(models, queued[0])
    jobs.cancel_queued(models, queued[1])
    jobs.submit_training(models, TRAIN_OPTIONS)


@pytest.mark.slow
def test_the_cap_holds_when_submissions_arrive_at_once(busy_slot):
    """Six processes submit together (as six browser tabs would): three places, three accepted."""
    script = ("import sys, time\n"
              "from xray_core import jobs\n"
              "while time.time() < float(sys.argv[2]): pass\n"
              "try:\n"
              f"    jobs.submit_training(sys.argv[1], {TRAIN_OPTIONS!r}, start=False)\n"
              "    print('accepted')\n"
              "except jobs.CapacityError:\n"
              "    print('refused')\n")
    go = str(time.time() + 4)
    env = dict(os.environ, PYTHONPATH=str(PROJECT))
    procs = [subprocess.Popen([sys.executable, "-c", script, str(busy_slot), go], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(6)]
    answers = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        answers.append(out.strip())
    assert sorted(answers) == ["accepted"] * 3 + ["refused"] * 3
    assert len(jobs.queued_jobs(busy_slot)) == 3


def test_an_idle_queue_accepts_a_job_that_starts_at_once_and_zero_switches_training_off(tmp_path, monkeypatch):
    monkeypatch.setenv("XRAY_MAX_QUEUED_TRAININGS", "0")
    models = tmp_path / "models"
    jobs.submit_training(models, TRAIN_OPTIONS, start=False)  # idle: starts at once, so accepted
    with pytest.raises(jobs.CapacityError, match="0 waiting"):
        jobs.submit_training(models, TRAIN_OPTIONS, start=False)
    monkeypatch.setenv("XRAY_MAX_RUNNING_TRAININGS", "0")
    with pytest.raises(jobs.CapacityError, match="switched off"):
        jobs.submit_training(models, TRAIN_OPTIONS, start=False)


@pytest.mark.slow
@pytest.mark.parametrize("slots", [1, 2])
def test_the_running_limit_is_the_number_of_workers_started(tmp_path, monkeypatch, slots):
    """Real workers on two queued jobs whose train command stops at its first argument (an
    epoch count of 0, refused before TensorFlow is imported), so each ends in seconds."""
    monkeypatch.setenv("XRAY_MAX_RUNNING_TRAININGS", str(slots))
    queue = tmp_path / "models" / jobs.QUEUE_DIR
    ids = [f"job-{i}" for i in range(2)]
    for i, run_id in enumerate(ids):
        fileio.atomic_write_json(queue / f"{run_id}.json", {"run_id": run_id, "argv": ["--epochs", "0"],
                                                            "submitted": f"2026-01-01T00:00:0{i}"})
    assert jobs.ensure_worker(queue.parent)
    busy = [jobs._slot_busy(queue.parent, i) for i in range(2)]
    assert busy == [True, slots == 2]  # the locks are held by the workers from their start
    deadline = time.monotonic() + 300
    while not all((queue / "logs" / f"{i}.exit.json").is_file() for i in ids):
        assert time.monotonic() < deadline, "the workers did not run both jobs"
        time.sleep(0.5)
    assert all("at least 1, got 0" in jobs.launch_failure(queue.parent, i) for i in ids)


def test_the_train_page_says_when_the_cap_is_reached(busy_slot, monkeypatch, synthetic_dataset):
    models = busy_slot
    monkeypatch.setenv("XRAY_MAX_QUEUED_TRAININGS", "1")
    at = _app(monkeypatch, "pages/train.py", XRAY_DATA_DIR=synthetic_dataset, XRAY_MODELS_DIR=models)
    at.button(key="train_start").click().run()
    assert at.success and "Queued" in at.success[0].value
    at.button(key="train_start").click().run()
    assert any("at most 1 training at a time with 1 waiting" in e.value for e in at.error)
    assert len(jobs.queued_jobs(models)) == 1


def test_worklist_capacity_for_the_batch_scoring_page(monkeypatch):
    jobs.check_capacity("worklist", running=0, queued=0)
    jobs.check_capacity("worklist", running=1, queued=2)
    with pytest.raises(jobs.CapacityError, match="at most 1 worklist at a time with 3 waiting"):
        jobs.check_capacity("worklist", running=1, queued=3)
    monkeypatch.setenv("XRAY_MAX_RUNNING_WORKLISTS", "2")
    jobs.check_capacity("worklist", running=1, queued=3)
    monkeypatch.setenv("XRAY_MAX_RUNNING_WORKLISTS", "many")
    with pytest.raises(settings.SettingsError, match="whole number"):
        jobs.check_capacity("worklist", running=0, queued=0)


@pytest.mark.slow
def test_a_corrupt_job_file_is_reported_not_skipped(tmp_path, synthetic_dataset, monkeypatch):
    models = tmp_path / "models"
    jobs.submit_training(models, TRAIN_OPTIONS, start=False)
    (models / jobs.QUEUE_DIR / "broken.json").write_text('{"run_id": "broken", "argv": [')
    (models / jobs.QUEUE_DIR / "alien.json").write_text('["not", "a", "job"]')
    problems = jobs.queue_problems(models)
    assert len(problems) == 2 and all("will never start" in p for p in problems)
    assert any("broken.json" in p for p in problems) and any("alien.json" in p for p in problems)
    assert len(jobs.queued_jobs(models)) == 1
    at = _app(monkeypatch, "pages/train.py", XRAY_DATA_DIR=synthetic_dataset, XRAY_MODELS_DIR=models)
    assert sum("will never start" in w.value for w in at.warning) == 2


def test_uploads_over_50_mb_are_refused_with_a_sentence():
    assert imaging.MAX_UPLOAD_MB == 50
    big = b"\x89PNG\r\n\x1a\n" + bytes(50 * 1024 * 1024)
    with pytest.raises(imaging.ImageDecodeError, match="50 MB"):
        imaging.decode(big, "huge.png")
    import tomllib
    config = tomllib.loads((PROJECT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] == imaging.MAX_UPLOAD_MB  # the server refuses it first


# ------------------------------------------------------------------------------------- privacy

PATIENT = {"PatientName": "Zqxname^Privacytest", "PatientID": "ZQXID-88123",
           "PatientBirthDate": "19990317", "AccessionNumber": "ZQXACC7731"}


def _patient_dicom(pixels) -> bytes:
    from tests.test_app_diagnose import dicom_bytes
    import io

    import pydicom

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(pixels)))
    for key, value in PATIENT.items():
        setattr(ds, key, value)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    raw = out.getvalue()
    assert all(v.encode() in raw for v in PATIENT.values())
    return raw


def _traces(folders: list[Path], since: float) -> list[str]:
    """Files changed since `since` under `folders` that hold a patient field's value."""
    needles = [v.encode() for v in PATIENT.values()] + [b"Zqxname", b"Privacytest"]
    hits = []
    for folder in folders:
        for path in folder.rglob("*"):
            try:
                if not path.is_file() or path.stat().st_mtime < since:
                    continue
                data = path.read_bytes()
            except OSError:
                continue  # removed while we walked (another test's temporary file)
            hits += [f"{path}: {n!r}" for n in needles if n in data]
    return hits


@pytest.mark.slow
def test_a_dicom_with_patient_fields_leaves_no_trace_after_predict_score_report_and_diagnose(
        monkeypatch, synthetic_dataset, tiny_run, tmp_path):
    runs_root, run_id = tiny_run
    models = tmp_path / "models"
    import shutil

    shutil.copytree(runs_root / run_id, models / run_id)
    private_tmp, home = tmp_path / "tmp", tmp_path / "home"
    private_tmp.mkdir()
    home.mkdir()
    # A film the input gate accepts (at least 96 px a side): a synthetic one, enlarged.
    pixels = imaging.resize(imaging.decode(sorted((synthetic_dataset / "val" / "PNEUMONIA").iterdir())[0]),
                            (256, 256))
    upload = tmp_path / "upload" / "scan.dcm"
    upload.parent.mkdir()
    upload.write_bytes(_patient_dicom(pixels))
    start = time.time() - 1
    env = dict(os.environ, PYTHONPATH=str(PROJECT), TMPDIR=str(private_tmp), HOME=str(home),
               XRAY_MODELS_DIR=str(models), XRAY_CACHE_DIR=str(tmp_path / "cache"))

    proc = subprocess.run([sys.executable, "-m", "xray_core", "predict", run_id, str(upload),
                           "--runs-dir", str(models)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    from xray_core import case
    from xray_core.model import load_model

    (expected,) = case.assess_films(load_model(run_id, root=models), [case.read(upload.read_bytes(), upload.name)])
    row = next((line.split() for line in proc.stdout.splitlines() if "scan.dcm" in line), None)
    assert row is not None and row[1:3] == [expected.verdict, f"{expected.probability:.4f}"], proc.stdout
    assert not [v for v in PATIENT.values() if v in proc.stdout + proc.stderr]

    # score: the batch table of a folder holding the same file.
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "xray_core", "score", run_id, str(upload.parent),
                           "--out", str(out / "scores.csv"), "--workers", "0", "--runs-dir", str(models)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "scan.dcm" in (out / "scores.csv").read_text()  # the film was scored, its row is there
    assert not [v for v in PATIENT.values() if v in proc.stdout + proc.stderr]

    # report: the one-page PDF (its text extracted: PDF streams are compressed).
    proc = subprocess.run([sys.executable, "-m", "xray_core", "report", run_id, str(upload),
                           "--out", str(out / "report.pdf"), "--samples", "128", "--show-anyway",
                           "--runs-dir", str(models)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert not [v for v in PATIENT.values() if v in proc.stdout + proc.stderr]
    from pypdf import PdfReader

    pdf = PdfReader(out / "report.pdf")
    text = " ".join(page.extract_text() for page in pdf.pages) + " " + str(dict(pdf.metadata or {}))
    assert "scan" in text  # the text was extracted (the film's name is on the page)
    assert not [v for v in [*PATIENT.values(), "Zqxname", "Privacytest"] if v in text]

    # Diagnose: the same file uploaded through the page, explained, its result zip built.
    for name in ("TMPDIR", "TEMP", "TMP"):
        monkeypatch.setenv(name, str(private_tmp))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    at = _app(monkeypatch, XRAY_DATA_DIR=synthetic_dataset, XRAY_MODELS_DIR=models, HOME=home)
    at.select_slider(key="diagnose_samples").set_value(250)
    at.file_uploader(key="diagnose_upload").set_value(("scan.dcm", upload.read_bytes(), "application/dicom"))
    at.run()
    assert not at.exception
    assert any(m.label == "Probability of pneumonia" for m in at.metric), [e.value for e in at.error]
    page_text = " ".join(str(getattr(e, "value", "")) for e in (*at.markdown, *at.caption, *at.metric))
    assert not [v for v in PATIENT.values() if v in page_text]

    assert _traces([upload.parent], 0)  # the scan does find the fields, in the uploaded file itself
    folders = [models, private_tmp, home, tmp_path / "cache", out, PROJECT]
    assert _traces(folders, start) == []


# ---------------------------------------------------------------- worklist uploads: privacy, cap


def _private_tmp(monkeypatch, tmp_path: Path) -> Path:
    """The server's temporary folder, for this test alone (TMPDIR, also for the processes started)."""
    import tempfile

    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    for name in ("TMPDIR", "TEMP", "TMP"):
        monkeypatch.setenv(name, str(private_tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    return private_tmp


def _models_copy(tiny_run, tmp_path: Path) -> tuple[Path, str]:
    import shutil

    runs_root, run_id = tiny_run
    models = tmp_path / "models"
    shutil.copytree(runs_root / run_id, models / run_id)
    return models, run_id


def _zip_of(files: list[tuple[str, bytes]]) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, raw in files:
            zf.writestr(name, raw)
    return buf.getvalue()


def test_worklist_uploads_wait_in_a_private_temporary_folder_and_the_cap_refuses_one_more(
        monkeypatch, tiny_run, tmp_path):
    import stat

    from tests.test_scoring import make_films
    from xray_core import scoring

    models, run_id = _models_copy(tiny_run, tmp_path)
    private_tmp = _private_tmp(monkeypatch, tmp_path)
    films = [(p.name, p.read_bytes()) for p in make_films(tmp_path / "src", 4, size=64, nested=False)]
    monkeypatch.setenv("XRAY_MAX_UPLOAD_FILES", "3")
    for files in (films, [("night.zip", _zip_of(films))]):  # 4 files, or one zip of 4 films
        with pytest.raises(jobs.CapacityError, match="This upload holds 4 films; this server scores at most 3 "
                                                     "uploaded films per worklist"):
            uploads.submit_worklist_uploads(models, run_id, files, start=False)
    assert list(private_tmp.iterdir()) == []  # nothing of the refused uploads is left
    assert scoring.list_jobs(models) == [] and not any((models / scoring.WORKLISTS_DIR).glob("*/"))

    job_id = uploads.submit_worklist_uploads(models, run_id, films[:3], start=False)
    job_dir = models / scoring.WORKLISTS_DIR / job_id
    folder = Path(uploads.upload_record(job_dir)["folder"])
    assert folder.parent == private_tmp and stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert sorted(p.name for p in folder.rglob("*") if p.is_file()) == sorted(n for n, _ in films[:3])
    assert scoring.job_info(job_dir)["input"].startswith(str(folder))
    held = [p for p in models.rglob("*") if p.is_file() and any(raw in p.read_bytes() for _, raw in films)]
    assert held == []  # no uploaded film under the models folder

    monkeypatch.setenv("XRAY_MAX_UPLOAD_FILES", "0")
    with pytest.raises(jobs.CapacityError, match="switched off"):
        uploads.submit_worklist_uploads(models, run_id, films[:1], start=False)
    monkeypatch.setenv("XRAY_MAX_UPLOAD_FILES", "3")
    monkeypatch.setenv("XRAY_MAX_QUEUED_WORKLISTS", "0")  # the job above holds the one free slot
    with pytest.raises(jobs.CapacityError, match="at most 1 worklist at a time with 0 waiting"):
        uploads.submit_worklist_uploads(models, run_id, films[:1], start=False)
    monkeypatch.setenv("XRAY_MODE", "viewer")
    with pytest.raises(settings.ViewerModeError):
        uploads.submit_worklist_uploads(models, run_id, films[:1], start=False)
    assert len(list(private_tmp.iterdir())) == 1


def test_the_worklist_page_refuses_more_files_than_the_cap_with_a_sentence(monkeypatch, tiny_run, tmp_path):
    from tests.test_scoring import make_films
    from xray_core import scoring

    models, _ = _models_copy(tiny_run, tmp_path)
    private_tmp = _private_tmp(monkeypatch, tmp_path)
    films = make_films(tmp_path / "src", 3, size=64, nested=False)
    at = _app(monkeypatch, "pages/worklist.py", XRAY_DATA_DIR=tmp_path / "src", XRAY_MODELS_DIR=models,
              XRAY_MAX_UPLOAD_FILES=2)
    at.radio(key="worklist_source").set_value("Upload films or a zip").run()
    assert any("At most 2 films" in c.value for c in at.caption)
    at.file_uploader(key="worklist_upload").set_value([(p.name, p.read_bytes(), "image/png") for p in films])
    at.button(key="worklist_start").click().run()
    assert not at.exception
    assert [e.value for e in at.error] == [
        "This upload holds 3 films; this server scores at most 2 uploaded films per worklist. Upload at most 2 "
        "(in several worklists if need be), or ask the administrator to put the films in a folder on the server "
        "and score that folder."]
    assert scoring.list_jobs(models) == [] and list(private_tmp.iterdir()) == []


@pytest.mark.slow
def test_a_worklist_upload_with_patient_fields_leaves_nothing_on_disk_after_its_job(
        monkeypatch, synthetic_dataset, tiny_run, tmp_path):
    from tests.test_scoring import make_films
    from xray_core import scoring

    models, run_id = _models_copy(tiny_run, tmp_path)
    private_tmp = _private_tmp(monkeypatch, tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    pixels = imaging.resize(imaging.decode(sorted((synthetic_dataset / "val" / "PNEUMONIA").iterdir())[0]),
                            (256, 256))
    files = [(p.name, p.read_bytes(), "image/png") for p in make_films(tmp_path / "src", 3, size=64, nested=False)]
    files.append(("scan.dcm", _patient_dicom(pixels), "application/dicom"))
    start = time.time() - 1
    at = _app(monkeypatch, "pages/worklist.py", XRAY_DATA_DIR=synthetic_dataset, XRAY_MODELS_DIR=models,
              XRAY_CACHE_DIR=tmp_path / "cache", HOME=home)
    at.radio(key="worklist_source").set_value("Upload films or a zip").run()
    at.file_uploader(key="worklist_upload").set_value(files)
    at.button(key="worklist_start").click().run()
    assert not at.exception and not at.error
    (job,) = scoring.list_jobs(models)
    folder = Path(uploads.upload_record(job["path"])["folder"])
    assert folder.parent == private_tmp
    wait_for(lambda: scoring.job_info(job["path"])["state"] not in ("queued", "starting", "running"))
    assert scoring.job_info(job["path"])["state"] == "completed"
    wait_for(lambda: uploads.upload_record(job["path"])["removed"], timeout=30)  # the watcher, when the job ends
    assert not folder.exists() and list(private_tmp.iterdir()) == []
    rows = (Path(job["path"]) / scoring.JOB_SCORES).read_text()
    assert "scan.dcm" in rows and rows.count("\n") == 5  # header and 4 films: the DICOM was scored

    at.run()
    assert not at.exception
    assert any("Completed: 4 films" in s.value for s in at.success)
    assert any("uploaded films were removed from the server" in c.value for c in at.caption)
    table = at.dataframe[0].value
    assert table["thumbnail"].str.startswith("data:image/png;base64,").all()  # from this session's memory
    held = dict(at.session_state["worklist_uploaded"])
    at.session_state["worklist_uploaded"] = {}  # another session: the film is gone from the server
    at.button(key="worklist_open").click().run()  # said, not crashed
    assert not at.exception
    assert any("uploads are removed from the server when their job ends" in i.value for i in at.info)
    assert "diagnose_open" not in at.session_state
    at.session_state["worklist_uploaded"] = held  # the uploading session still holds its films
    at.button(key="worklist_open").click().run()
    assert not at.exception
    opened = at.session_state["diagnose_open"]
    sent = {name: raw for name, raw, _ in files}
    assert opened["data"] == sent[opened["name"]] and "path" not in opened
    assert any(f"From the worklist: {opened['name']}" in i.value for i in at.info)
    # Diagnose read the film from memory and judged it (a 64 px film: too small for the gate)
    assert any("Not a chest X-ray this model can read" in e.value and "64 x 64 pixels" in e.value for e in at.error), \
        [e.value for e in at.error]

    assert _traces([models, private_tmp, home, tmp_path / "cache", PROJECT], start) == []
    log = (Path(job["path"]) / scoring.JOB_LOG).read_text()
    # The watcher notes the removal, or the page's sweep when it came first ("...; found by a sweep").
    assert "uploaded films were removed (job completed" in log and "scan.dcm" not in log


@pytest.mark.slow
def test_a_failed_worklist_upload_job_has_its_uploads_removed(monkeypatch, tiny_run, tmp_path):
    from tests.test_scoring import make_films
    from xray_core import scoring

    models, _ = _models_copy(tiny_run, tmp_path)
    private_tmp = _private_tmp(monkeypatch, tmp_path)
    films = [(p.name, p.read_bytes()) for p in make_films(tmp_path / "src", 2, size=64, nested=False)]
    job_id = uploads.submit_worklist_uploads(models, "no-such-run", films)  # its process fails: no such model
    job_dir = models / scoring.WORKLISTS_DIR / job_id
    wait_for(lambda: scoring.job_info(job_dir)["state"] == "failed")
    wait_for(lambda: uploads.upload_record(job_dir)["removed"] is not None, timeout=30)
    assert list(private_tmp.iterdir()) == []
    assert uploads.upload_record(job_dir)["reason"] == "job failed"


def _job_with_uploads(models: Path, status: dict) -> tuple[Path, Path]:
    """A job folder as the page leaves it, with the given status, and its upload folder."""
    import tempfile

    from xray_core import scoring

    job_dir = scoring.new_job_dir(models)
    folder = Path(tempfile.mkdtemp(prefix=uploads.UPLOAD_PREFIX))
    (folder / "input").mkdir()
    (folder / "input" / "a.png").write_bytes(b"film")
    fileio.atomic_write_json(job_dir / uploads.UPLOADS_FILE, {"folder": str(folder), "files": 1, "removed": None})
    scoring.submit_job(models, "some-run", folder / "input", job_dir=job_dir, start=False)
    fileio.atomic_write_json(job_dir / scoring.JOB_STATUS, status)
    return job_dir, folder


def test_uploads_go_when_a_job_is_cancelled_and_wait_a_while_when_it_was_interrupted(monkeypatch, tmp_path):
    _private_tmp(monkeypatch, tmp_path)
    models = tmp_path / "models"
    job_dir, folder = _job_with_uploads(models, {"state": "cancelled"})
    assert uploads.discard_when_ended(job_dir, poll=0.01) == 0
    assert not folder.exists() and uploads.upload_record(job_dir)["reason"] == "job cancelled"

    # a running job whose process died: kept for a resume, removed after keep_interrupted seconds
    job_dir, folder = _job_with_uploads(models, {"state": "running", "pid": 999_999_999})
    assert uploads._discard_reason(job_dir, None, uploads.INTERRUPTED_KEEP)[0] is None
    started = time.monotonic()
    assert uploads.discard_when_ended(job_dir, poll=0.05, keep_interrupted=0.5) == 0
    assert time.monotonic() - started >= 0.5 and not folder.exists()

    # still running: nothing goes; the page's sweep removes only what ended
    job_dir, folder = _job_with_uploads(models, {"state": "running", "pid": os.getpid()})
    done_dir, done_folder = _job_with_uploads(models, {"state": "completed"})
    assert uploads.sweep_uploads(models) == []
    assert folder.exists() and not done_folder.exists()


def test_an_edited_uploads_record_cannot_make_the_server_remove_another_folder(monkeypatch, tmp_path):
    _private_tmp(monkeypatch, tmp_path)
    models = tmp_path / "models"
    job_dir, _ = _job_with_uploads(models, {"state": "completed"})
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("keep")
    fileio.atomic_write_json(job_dir / uploads.UPLOADS_FILE, {"folder": str(precious), "files": 1, "removed": None})
    problems = uploads.sweep_uploads(models)
    assert len(problems) == 1 and "not a folder the dashboard made for uploads, so nothing was removed" in problems[0]
    assert (precious / "keep.txt").read_text() == "keep"
    (job_dir / uploads.UPLOADS_FILE).write_text("{broken")
    (problem,) = uploads.sweep_uploads(models)
    assert "cannot be read" in problem


def test_a_signed_in_user_who_queues_a_training_is_recorded(busy_slot, monkeypatch, synthetic_dataset):
    models = busy_slot
    monkeypatch.setenv("XRAY_DATA_DIR", str(synthetic_dataset))
    monkeypatch.setenv("XRAY_MODELS_DIR", str(models))
    at = AppTest.from_file(APP, default_timeout=120)
    at.secrets["auth"] = AUTH
    at.user = {"is_logged_in": True, "name": "Dr Ada Lovelace", "email": "ada@hospital.example"}
    at.run()
    at.switch_page("pages/train.py").run()
    at.button(key="train_start").click().run()
    assert not at.exception and at.success
    (job,) = jobs.queued_jobs(models)
    assert job["submitted_by"] == "ada@hospital.example"
    assert any("queued by ada@hospital.example" in m.value for m in at.markdown)


# ------------------------------------------------- sign-in through a real server and browser


class _IdentityProvider(http.server.BaseHTTPRequestHandler):
    """Just enough of an OpenID provider: its metadata, and a record of the sign-in redirect."""

    def do_GET(self):  # noqa: N802 - http.server's naming
        base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.server.hits.append(self.path)
        if self.path.startswith("/.well-known/openid-configuration"):
            body = json.dumps({"issuer": base, "authorization_endpoint": base + "/authorize",
                               "token_endpoint": base + "/token", "jwks_uri": base + "/jwks",
                               "response_types_supported": ["code"],
                               "subject_types_supported": ["public"],
                               "id_token_signing_alg_values_supported": ["RS256"]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
        else:
            body = b"<html><body>identity provider sign-in form</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        """Quiet."""


@pytest.mark.browser
@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="/usr/bin/chromium is not installed")
def test_a_served_app_with_sign_in_shows_nothing_before_it_and_hands_over_to_the_provider(
        tmp_path, synthetic_dataset):
    from playwright.sync_api import sync_playwright

    idp = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _IdentityProvider)
    idp.hits = []
    threading.Thread(target=idp.serve_forever, daemon=True).start()
    port = _free_port()
    home = tmp_path / "home"
    (home / ".streamlit").mkdir(parents=True)
    (home / ".streamlit" / "secrets.toml").write_text(
        "[auth]\n"
        f'redirect_uri = "http://127.0.0.1:{port}/oauth2callback"\n'
        'cookie_secret = "a-test-only-cookie-secret-of-enough-length-0123456789"\n'
        'client_id = "xray-dashboard"\nclient_secret = "test-only"\n'
        f'server_metadata_url = "http://127.0.0.1:{idp.server_address[1]}/.well-known/openid-configuration"\n')
    env = dict(os.environ, HOME=str(home), XRAY_DATA_DIR=str(synthetic_dataset),
               XRAY_MODELS_DIR=str(tmp_path / "models"), NO_PROXY="127.0.0.1")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py",
                             "--server.headless", "true", "--server.port", str(port)],
                            cwd=PROJECT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(base + "/_stcore/health", timeout=2).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "streamlit did not start"
                time.sleep(0.5)
        with sync_playwright() as p:
            chromium = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"])
            try:
                page = chromium.new_page()
                page.set_default_timeout(90_000)
                for address in (base, base + "/dataset"):
                    page.goto(address)
                    page.get_by_role("button", name="Sign in").wait_for()
                    assert page.get_by_text("Dataset folder").count() == 0
                    assert page.locator('[data-testid="stDataFrame"]').count() == 0
                    assert "84 images" not in page.content()
                page.goto(base)  # (/dataset also opened a "page not found" dialog)
                page.get_by_role("button", name="Sign in").click()
                page.wait_for_url(re.compile(rf"http://127\.0\.0\.1:{idp.server_address[1]}/authorize\?.*"))
                assert "client_id=xray-dashboard" in page.url
                assert f"redirect_uri=http%3A%2F%2F127.0.0.1%3A{port}%2Foauth2callback" in page.url
            finally:
                chromium.close()
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        idp.shutdown()
        idp.server_close()
