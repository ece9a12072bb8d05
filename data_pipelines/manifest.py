"""Manifest: JSONL, one clip (or image) per line.

Fields: `path` (absolute, or relative to the manifest's folder), `caption`, `source`
(name used for mixing), `media` (video|image), and, filled by `scan`/`prepare`:
`width`, `height` (as displayed, after rotation), `duration` (s), `fps`, `motion_score`.
"""

from __future__ import annotations

import json
import logging
import os

from data_pipelines import video

log = logging.getLogger("data_pipelines")
_warned: set[str] = set()


def warn_skip(path: str, reason: str) -> None:
    """One warning line per bad file per process, however often it is met."""
    if path not in _warned:
        _warned.add(path)
        log.warning("skipping %s: %s", path, reason)


def read_manifest(path: str) -> list[dict]:
    root = os.path.dirname(os.path.abspath(path))
    out = []
    with open(path) as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                rec["path"] = os.path.join(root, rec["path"])  # no-op for absolute paths
                out.append(rec)
    return out


def write_manifest(path: str, records: list[dict]) -> None:
    """Writes records with paths relative to the manifest's folder when they are inside it."""
    root = os.path.dirname(os.path.abspath(path))
    os.makedirs(root, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for rec in records:
            rec = dict(rec)
            rel = os.path.relpath(os.path.abspath(rec["path"]), root)
            if not rel.startswith(".."):
                rec["path"] = rel
            f.write(json.dumps(rec) + "\n")
    os.replace(tmp, path)  # atomic: a crash never leaves half a manifest


def _caption_for(path: str) -> str:
    """Caption from a sidecar `<name>.txt`; else the file name, underscores as spaces."""
    txt = os.path.splitext(path)[0] + ".txt"
    if os.path.exists(txt):
        with open(txt) as f:
            return f.read().strip()
    return os.path.splitext(os.path.basename(path))[0].replace("_", " ")


def probe_record(rec: dict) -> dict | None:
    """Fills width/height/duration/fps/media from the file; None (and one warning) if bad."""
    try:
        info = video.probe(rec["path"])
    except video.DecodeError as e:
        warn_skip(rec["path"], f"unreadable ({e})")
        return None
    return {**rec, **info}


def scan(folder: str) -> tuple[list[dict], list[str]]:
    """Walks `folder` for videos and images. Source = first sub-folder name (or 'default').

    Returns (records, skipped paths). Unreadable files are skipped with one warning each.
    """
    records, skipped = [], []
    folder = os.path.abspath(folder)
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if video.media_type(path) is None:
                continue
            rel = os.path.relpath(path, folder).split(os.sep)
            rec = {
                "path": path,
                "caption": _caption_for(path),
                "source": rel[0] if len(rel) > 1 else "default",
            }
            probed = probe_record(rec)
            if probed is None:
                skipped.append(path)
            else:
                records.append(probed)
    return records, skipped


def load_input(input_path: str) -> tuple[list[dict], list[str]]:
    """A folder (scanned) or a manifest (probed where width/duration are missing)."""
    if os.path.isdir(input_path):
        return scan(input_path)
    records, skipped = [], []
    for rec in read_manifest(input_path):
        if not {"width", "height", "duration", "media"} <= rec.keys():
            probed = probe_record(rec)
            if probed is None:
                skipped.append(rec["path"])
                continue
            rec = probed
        rec.setdefault("source", "default")
        records.append(rec)
    return records, skipped
