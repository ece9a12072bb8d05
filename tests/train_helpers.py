"""Helpers for tests that run `lumina-jax train` in subprocesses (imported explicitly)."""

import json
import pathlib


def per_step(workdir):
    """The last logged record of every step (a resumed run re-logs steps it redid)."""
    records = {}
    for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            records[rec["step"]] = rec
    return records
