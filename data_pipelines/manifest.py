"""Manifest: JSONL, one clip (or image) per line.

Fields: `path` (absolute, or relative to the manifest's folder), `caption`, `source`
(name used for mixing), `media` (video|image), and, filled by `scan`/`prepare`:
`width`, `height` (as displayed, after rotation), `duration` (s), `fps`, `motion_score`.
"""

from __future__ import annotations

import codecs
import collections
import json
import logging
import os

from data_pipelines import video
from lumina_jax.errors import UserError

log = logging.getLogger("data_pipelines")
_warned: set[str] = set()


class DataError(UserError, ValueError):
    """Data that cannot be used as given (bad manifest, no usable media, a stream of only
    bad files); the message names the file and the fix."""


def warn_skip(path: str, reason: str) -> None:
    """One warning line per bad file per process, however often it is met."""
    if path not in _warned:
        _warned.add(path)
        log.warning("skipping %s: %s", path, reason)


def read_manifest(path: str) -> list[dict]:
    """The records of a JSONL manifest, paths made absolute.

    A malformed line raises DataError (naming the file, the line and the fix) rather than
    being skipped: a manifest lists clips on purpose, so dropping a line would lose a clip
    silently, while an error loses nothing and the fix is one edit.
    """
    root = os.path.dirname(os.path.abspath(path))
    out, bad = [], []
    try:
        with open(path, encoding="utf-8-sig") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    bad.append(f"line {number} is not JSON ({e.msg})")
                    continue
                if not (isinstance(rec, dict)
                        and all(isinstance(rec.get(k), str) for k in ("path", "caption"))):
                    bad.append(f"line {number} lacks a string 'path' or 'caption'")
                    continue
                rec["path"] = os.path.join(root, rec["path"])  # no-op for absolute paths
                out.append(rec)
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read manifest {path} ({e}): give a folder of media or a "
                        f"UTF-8 JSONL manifest") from None
    if bad:
        more = f" (and {len(bad) - 1} more bad lines)" if len(bad) > 1 else ""
        raise DataError(f"manifest {path}: {bad[0]}{more}: fix or delete such lines; each "
                        f'line is one JSON object like {{"path": "clip.mp4", "caption": "..."}}')
    return out


def write_manifest(path: str, records: list[dict]) -> None:
    """Writes records with paths relative to the manifest's folder when they are inside it."""
    root = os.path.dirname(os.path.abspath(path))
    os.makedirs(root, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for rec in records:
            rec = dict(rec)
            rel = os.path.relpath(os.path.abspath(rec["path"]), root)
            if not rel.startswith(".."):
                rec["path"] = rel
            f.write(json.dumps(rec) + "\n")
    os.replace(tmp, path)  # atomic: a crash never leaves half a manifest


def _read_text(txt: str) -> str:
    """A caption file: UTF-8 (BOM or not), UTF-16 with a BOM, else Latin-1 (warned: every
    byte string decodes as Latin-1, so an old editor's file still gives its caption)."""
    video.check_file(txt)  # a FIFO named .txt would block open()
    with open(txt, "rb") as f:
        data = f.read()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        text = data.decode("utf-16")
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = data.decode("latin-1")
            log.warning("%s is not UTF-8: read it as Latin-1", txt)
    if "\0" in text:  # UTF-16 without a BOM, or not text at all
        raise ValueError("NUL characters: save it as UTF-8")
    return text.strip()


def _caption_for(path: str, skipped: dict[str, str]) -> str | None:
    """Caption from a sidecar `<name>.txt`; else the file name, underscores as spaces.
    None (the media skipped as bad_caption, naming the .txt) if the sidecar is unreadable."""
    txt = os.path.splitext(path)[0] + ".txt"
    if not os.path.lexists(txt):
        return os.path.splitext(os.path.basename(path))[0].replace("_", " ")
    try:
        return _read_text(txt)
    except (OSError, ValueError, video.DecodeError) as e:  # ValueError: UnicodeDecodeError
        skip(skipped, path, "bad_caption", f"caption {txt}: {e}")
        return None


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

    Returns (records, {skipped path: reason}); every file that is neither used nor a
    sidecar caption is skipped, warned once and counted: unknown_extension,
    caption_without_media, bad_caption, unreadable (also FIFOs, devices, broken links).
    """
    records, skipped = [], {}
    folder = os.path.abspath(folder)

    def unreadable_dir(e: OSError) -> None:  # os.walk would pass over it silently
        skip(skipped, e.filename, "unreadable", str(e))

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable_dir):
        dirnames.sort()
        stems = {os.path.splitext(n)[0] for n in filenames if video.media_type(n)}
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            stem, ext = os.path.splitext(name)
            if video.media_type(path) is None:
                if ext != ".txt":
                    skip(skipped, path, "unknown_extension", "not a video or image extension")
                elif stem not in stems:
                    skip(skipped, path, "caption_without_media", "no media file of that name")
                continue  # else a sidecar caption, read with its media
            caption = _caption_for(path, skipped)
            if caption is None:
                continue
            rel = os.path.relpath(path, folder).split(os.sep)
            rec = {"path": path, "caption": caption,
                   "source": rel[0] if len(rel) > 1 else "default"}
            probed = probe_record(rec, skipped)
            if probed is not None:
                records.append(probed)
    return records, skipped


def load_input(input_path: str) -> tuple[list[dict], dict[str, str]]:
    """A folder (scanned) or a manifest (probed where width/duration are missing)."""
    if os.path.isdir(input_path):
        return scan(input_path)
    if not os.path.exists(input_path):
        raise DataError(f"input {input_path} does not exist: give a folder of videos/images "
                        f"or a JSONL manifest")
    records, skipped = [], {}
    for rec in read_manifest(input_path):
        if not {"width", "height", "duration", "fps", "media"} <= rec.keys():
            rec = probe_record(rec, skipped)
            if rec is None:
                continue
        rec.setdefault("source", "default")
        records.append(rec)
    return records, skipped
