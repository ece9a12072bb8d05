"""Manifest: JSONL, one clip (or image) per line.

Fields: `path` (absolute, or relative to the manifest's folder), `caption`, `source`
(name used for mixing), `media` (video|image), and, filled by `scan`/`prepare`:
`width`, `height` (as displayed, after rotation), `duration` (s), `fps`, `motion_score`.
"""

from __future__ import annotations

import collections
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


def skip(skipped: dict[str, str], path: str, reason: str, detail: str) -> None:
    """Records a skipped file under its reason code (the first one wins) and warns once."""
    warn_skip(path, f"{reason} ({detail})")
    skipped.setdefault(path, reason)


def skip_counts(skipped: dict[str, str]) -> dict[str, int]:
    """{reason: number of files}, for summaries."""
    return dict(sorted(collections.Counter(skipped.values()).items()))


def probe_record(rec: dict, skipped: dict[str, str]) -> dict | None:
    """Fills width/height/duration/fps/media from the file; None (skipped, warned) if bad."""
    try:
        info = video.probe(rec["path"])
    except video.DecodeError as e:
        skip(skipped, rec["path"], "unreadable", str(e))
        return None
    return {**rec, **info}


def scan(folder: str) -> tuple[list[dict], dict[str, str]]:
    """Walks `folder` for videos and images. Source = first sub-folder name (or 'default').

    Returns (records, {skipped path: reason}). Unreadable files are warned once each.
    """
    records, skipped = [], {}
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
            probed = probe_record(rec, skipped)
            if probed is not None:
                records.append(probed)
    return records, skipped


def load_input(input_path: str) -> tuple[list[dict], dict[str, str]]:
    """A folder (scanned) or a manifest (probed where width/duration are missing)."""
    if os.path.isdir(input_path):
        return scan(input_path)
    records, skipped = [], {}
    for rec in read_manifest(input_path):
        if not {"width", "height", "duration", "fps", "media"} <= rec.keys():
            rec = probe_record(rec, skipped)
            if rec is None:
                continue
        rec.setdefault("source", "default")
        records.append(rec)
    return records, skipped
