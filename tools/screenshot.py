"""Take the README's screenshot of Diagnose: docs/diagnose.png.

    python -m tools.screenshot                     # a film of the dataset's val/ folder
    python -m tools.screenshot --film FILE --width 1280 --out docs/diagnose.png

Serves the app with a real `streamlit run` (on 127.0.0.1), opens Diagnose in Debian's Chromium,
uploads one film, waits until the verdict and every explanation panel are drawn and the script run
has ended, and saves the whole page, reduced to a 256-colour PNG so that the README stays light.
Use a film of the dataset's official `val/` folder, never one of the held-back `test/` split. The
figure's caption in the README cites the dataset.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
from pathlib import Path

from tests.browser_helpers import CHROMIUM_MISSING, chromium, have_chromium, streamlit_server, wait_idle

PROJECT = Path(__file__).resolve().parents[1]
OUT = PROJECT / "docs" / "diagnose.png"
#: Where the dataset is looked for, in order, when --film is not given.
DATA_DIRS = ("$XRAY_DATA_DIR", "data/chest_xray", "../shared/data/chest_xray")


def default_film() -> Path:
    """The first PNEUMONIA film of the official val/ folder of the first dataset found."""
    for entry in DATA_DIRS:
        folder = Path(os.path.expandvars(entry)) if entry.startswith("$") else PROJECT / entry
        if entry.startswith("$") and entry[1:] not in os.environ:
            continue
        films = sorted((folder / "val" / "PNEUMONIA").glob("*.jpeg"))
        if films:
            return films[0]
    raise SystemExit("No dataset with a val/PNEUMONIA folder in " + ", ".join(DATA_DIRS)
                     + ": download it (`xray download --dest data`) or pass --film FILE.")


def page_png(base: str, film: Path, *, width: int, timeout_s: float) -> bytes:
    """The Diagnose page, whole, once `film`'s verdict and explanation panels are drawn."""
    with chromium() as browser:
        context = browser.new_context(viewport={"width": width, "height": 900}, device_scale_factor=1)
        page = context.new_page()
        page.set_default_timeout(timeout_s * 1000)
        page.goto(base)
        uploader = page.locator('[data-testid="stFileUploaderDropzoneInput"]')
        uploader.wait_for(state="attached")
        uploader.set_input_files(str(film))
        page.locator('[data-testid="stMetric"]', has_text="Probability of pneumonia").first.wait_for()
        page.get_by_text("Grad-CAM", exact=True).first.wait_for()
        wait_idle(page)
        page.wait_for_function("() => [...document.images].every(img => img.complete)")
        if page.locator('[data-testid="stException"]').count():
            raise SystemExit("Diagnose raised an exception: "
                             + page.locator('[data-testid="stException"]').first.inner_text())
        # Streamlit scrolls inside its own container: a viewport as tall as the page shows all of it.
        height = page.evaluate("() => Math.max(...[...document.querySelectorAll('[data-testid=\"stMain\"]')]"
                               ".map(e => e.scrollHeight), 900)")
        page.set_viewport_size({"width": width, "height": int(height) + 40})
        page.wait_for_timeout(1000)
        data = page.screenshot(full_page=True)
        context.close()
    return data


def small_png(data: bytes) -> bytes:
    """A 256-colour PNG of a screenshot (no dithering: flat colours stay flat)."""
    from PIL import Image

    image = Image.open(io.BytesIO(data)).convert("RGB")
    small = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    out = io.BytesIO()
    small.save(out, format="PNG", optimize=True)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--film", type=Path, help="the film to upload (default: the first of the dataset's "
                                                  "val/PNEUMONIA folder)")
    parser.add_argument("--out", type=Path, default=OUT, help="the PNG to write (default docs/diagnose.png)")
    parser.add_argument("--width", type=int, default=1280, help="browser width in pixels (default 1280)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for the page (default 300)")
    args = parser.parse_args(argv)
    if not have_chromium():
        raise SystemExit(CHROMIUM_MISSING)
    film = args.film or default_film()
    if not film.is_file():
        raise SystemExit(f"{film} is not a file: pass a chest film of the dataset's val/ folder with --film.")
    with tempfile.TemporaryDirectory() as cache:
        # The toolbar's "Deploy" button is Streamlit's, not the app's: left out of the picture.
        env = dict(os.environ, XRAY_CACHE_DIR=cache, STREAMLIT_CLIENT_TOOLBAR_MODE="minimal")
        with streamlit_server(env=env) as base:
            png = small_png(page_png(base, film, width=args.width, timeout_s=args.timeout))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(png)
    print(f"wrote {args.out} ({len(png) // 1024} KB) from {film.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
