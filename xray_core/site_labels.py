"""A site's label list: which films, with which label and which patient.

A folder (or a zip) whose films sit in NORMAL/ and PNEUMONIA/ folders at any depth (a Kermany
dataset, or its test/ folder), or a CSV `path,label[,patient]` with labels NORMAL/PNEUMONIA (or
0/1) and paths relative to the CSV. Patient ids come from the CSV's patient column, else from
Kermany file names (`data.parse_filename`); a film with neither is its own patient. Nothing is
decoded here: `site` takes the films through the assessment.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from pathlib import Path

from xray_core.model import CLASSES


class SiteError(ValueError):
    """A label list or a recalibration that cannot be used; the sentence says why and what to do."""


@dataclasses.dataclass
class LabelList:
    """The films of a label list, each with its label (0 NORMAL, 1 PNEUMONIA) and patient id."""

    source: str
    items: list  # scoring.inputs.Item, one per film
    labels: list[int]
    patients: list[str | None]  # None: unknown (the film is its own cluster)
    patients_from: str

    def __len__(self) -> int:
        return len(self.items)


def _label_of(value: str, where: str) -> int:
    text = str(value).strip().upper()
    if text in ("NORMAL", "0"):
        return 0
    if text in ("PNEUMONIA", "1"):
        return 1
    raise SiteError(f"{where}: the label {value!r} is neither NORMAL nor PNEUMONIA (nor 0 or 1). "
                    "Correct it, or leave the film out.")


def _class_from_parts(parts) -> int | None:
    """The class of a film from its folders: the nearest one named NORMAL or PNEUMONIA."""
    for part in reversed(list(parts)[:-1]):
        if part.upper() in CLASSES:
            return CLASSES.index(part.upper())
    return None


def _patient_from_name(name: str) -> str | None:
    """A Kermany file name's patient id; None for a name in no known form."""
    from xray_core import data

    patient, _ = data.parse_filename(name)
    return None if patient == Path(name).stem else patient


def _read_csv(path: Path) -> LabelList:
    from xray_core.scoring.inputs import Item

    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise SiteError(f"{path} is not a UTF-8 text CSV. Save it as CSV (UTF-8) with the columns "
                        "path,label[,patient].") from None
    rows = list(csv.reader(io.StringIO(text)))
    header = [h.strip().lower() for h in (rows[0] if rows else [])]
    if "path" not in header or "label" not in header:
        raise SiteError(f"{path} needs a header line with the columns path and label (and optionally patient); "
                        f"its first line is {','.join(rows[0]) if rows else 'empty'}.")
    col = {name: header.index(name) for name in ("path", "label", "patient") if name in header}
    items, labels, patients, seen = [], [], [], {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(col.values()):
            raise SiteError(f"{path}, line {line}: it has {len(row)} columns where the header has {len(header)}.")
        film = Path(row[col["path"]].strip())
        film = film if film.is_absolute() else path.parent / film
        label = _label_of(row[col["label"]], f"{path}, line {line}")
        if str(film) in seen:
            if seen[str(film)] != label:
                raise SiteError(f"{path}, line {line}: {film} is listed twice with different labels. Keep one.")
            continue
        seen[str(film)] = label
        try:
            st = film.stat()
            item = Item(str(film), int(st.st_size), int(st.st_mtime_ns))
        except OSError as exc:
            item = Item(str(film), -1, -1, f"{film} cannot be read ({exc.strerror}). Check the path in the list.")
        patient = row[col["patient"]].strip() if "patient" in col else ""
        items.append(item)
        labels.append(label)
        patients.append(patient or _patient_from_name(film.name))
    source = "the CSV's patient column" if "patient" in col else "Kermany file names"
    return LabelList(str(path), items, labels, patients, source)


def _read_tree(path: Path) -> LabelList:
    """A folder or zip: every film under a NORMAL or PNEUMONIA folder; the others are left out."""
    from xray_core.scoring.inputs import ZIP_SEP, iter_items

    items, labels, patients = [], [], []
    for item in iter_items(path):
        inner = item.path.split(ZIP_SEP, 1)[1] if ZIP_SEP in item.path and path.is_file() else \
            Path(item.path).relative_to(path).as_posix()
        label = _class_from_parts(inner.split("/"))
        if label is None:
            continue
        items.append(item)
        labels.append(label)
        patients.append(_patient_from_name(inner.rsplit("/", 1)[-1]))
    if not items:
        raise SiteError(f"{path} holds no films in NORMAL or PNEUMONIA folders. Put each film in a folder named "
                        "for its class (e.g. site/NORMAL/..., site/PNEUMONIA/...), or give a CSV path,label[,patient].")
    return LabelList(str(path), items, labels, patients, "Kermany file names")


def read_labels(labels: str | os.PathLike) -> LabelList:
    """The films and labels of a folder, a zip or a CSV (see the module's docstring)."""
    import zipfile

    path = Path(labels)
    if not path.exists():
        raise SiteError(f"{path} does not exist. Give a folder with NORMAL/ and PNEUMONIA/ folders, a zip of one, "
                        "or a CSV with the columns path,label[,patient].")
    if path.is_dir() or zipfile.is_zipfile(path):
        found = _read_tree(path)
    else:
        found = _read_csv(path)
    if not found.items:
        raise SiteError(f"{path} lists no films. Add rows path,label (label NORMAL or PNEUMONIA).")
    known = sum(p is not None for p in found.patients)
    if known == 0:
        found.patients_from = "none known: each film is counted as its own patient"
    elif known < len(found):
        found.patients_from += f" ({len(found) - known} films without one each count as their own patient)"
    return found
