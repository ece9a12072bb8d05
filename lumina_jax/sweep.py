"""Run a grid or list of config overrides as named runs, and summarise their metrics.

A sweep file is Python with `get_sweep()` returning

    {"grid": {"optim.lr": [1e-3, 3e-4], "seed": [0, 1]},   # every combination (4 runs)
     "list": [{"rules": "dp"}, {"rules": "fsdp", "mesh.fsdp": -1}]}  # each entry one variant

Runs are the grid's combinations times the list's entries (either part may be left out).
Each run is named after its overrides (`lr=0.001,seed=0`), so re-running a sweep resumes
the same workdirs. Overrides on the command line apply to every run.

  lumina-jax sweep --config configs/demo.py --sweep configs/sweeps/demo_lr.py \
      [--workdir ROOT] [--dry-run | --print-commands [--launcher PREFIX]] [--config.a.b=v ...]
  lumina-jax sweep --summarize ROOT     # ROOT/summary.md, summary.csv, loss_curves.png
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import math
import os
import pathlib
import re
import shlex
import subprocess
import sys

# Metrics summarised per run: final value of each, and best (lowest) of the losses.
SUMMARY_METRICS = ("loss", "grad_norm", "lr", "step_time_s", "tokens_per_s", "mfu")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sweep", help="run a grid of config overrides as named runs, or summarise them",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="configs/x.py or configs/x.py:arg (every run's base)")
    p.add_argument("--sweep", help="sweep file defining get_sweep() (see above), e.g. "
                                   "configs/sweeps/demo_lr.py")
    p.add_argument("--workdir", help="root folder, one sub-folder per run "
                                     "(default: workdirs/<config>_<sweep>)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true",
                      help="validate every run's config and list the runs; run nothing")
    mode.add_argument("--print-commands", action="store_true",
                      help="print one launch command per run (for a cluster); run nothing")
    mode.add_argument("--summarize", metavar="DIR",
                      help="tabulate final/best metrics of every run under DIR, plot losses")
    p.add_argument("--launcher", default="lumina-jax train",
                   help="command prefix for --print-commands, e.g. 'sbatch launch/slurm.sbatch'")
    p.set_defaults(func=run, accepts_overrides=True)


def run(args) -> int:
    overrides = list(getattr(args, "overrides", []))
    if args.summarize:
        if overrides or args.config or args.sweep:
            raise SystemExit("sweep --summarize DIR takes no --config/--sweep/overrides")
        print(summarize(args.summarize))
        return 0
    if not (args.config and args.sweep):
        raise SystemExit("sweep: give --config and --sweep (or --summarize DIR)")
    root = args.workdir or os.path.join(
        "workdirs", f"{_stem(args.config)}_{pathlib.Path(args.sweep).stem}")
    runs = expand(load_sweep(args.sweep), overrides)
    # A cluster run reads its data there, so printing commands skips the local data check.
    totals = validate(args.config, runs, check_data=not args.print_commands)
    if args.print_commands:
        for name, run_overrides in runs.items():
            print(shlex.join([*shlex.split(args.launcher), *train_args(
                args.config, os.path.join(root, name), run_overrides)]))
        return 0
    print(f"{len(runs)} runs under {root}:")
    for name, run_overrides in runs.items():
        print(f"  {name}: {' '.join(run_overrides)}")
    if args.dry_run:
        return 0
    failed = run_locally(args.config, root, runs, totals)
    print(summarize(root))
    if failed:
        print(f"failed runs: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def load_sweep(path: str) -> dict:
    from lumina_jax.train.config import call_python_file

    sweep = call_python_file(path, "get_sweep", error=SystemExit)
    unknown = set(sweep) - {"grid", "list"}
    if unknown:
        raise SystemExit(f"{path}: get_sweep() keys must be 'grid' and/or 'list', not "
                         f"{sorted(unknown)}")
    return sweep


def expand(sweep: dict, base: list[str] = ()) -> dict[str, list[str]]:
    """{run name: [base overrides..., run overrides...]} in grid-then-list order."""
    grid = sweep.get("grid") or {}
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    variants = [dict(v) for v in sweep.get("list") or [{}]]
    runs = [{**p, **v} for p in points for v in variants]
    keys = {k for r in runs for k in r}
    base_keys = {b.removeprefix("--config.").partition("=")[0] for b in base}
    if keys & base_keys:  # ambiguous: which value should win?
        raise SystemExit(f"sweep: {sorted(keys & base_keys)} set both by the sweep and on the "
                         "command line")
    leaves = [k.rsplit(".", 1)[-1] for k in keys]
    short = len(set(leaves)) == len(leaves)  # leaf names unless two keys share one
    out: dict[str, list[str]] = {}
    for r in runs:
        name = run_name(r, short)
        if name in out:
            raise SystemExit(f"sweep: two runs have the same overrides/name {name!r}")
        out[name] = [*base, *(f"--config.{k}={_format(v)}" for k, v in r.items())]
    return out


def run_name(overrides: dict, short: bool = True) -> str:
    safe = lambda s: re.sub(r"[^A-Za-z0-9._+-]+", "_", s).strip("_")  # no "," "=" "/"
    return ",".join(f"{safe(k.rsplit('.', 1)[-1] if short else k)}={safe(_format(v, True))}"
                    for k, v in overrides.items()) or "base"


def _format(value, name: bool = False) -> str:
    if isinstance(value, str):  # config.py takes a string override verbatim
        return value
    if isinstance(value, float) and name:
        return f"{value:g}"
    return repr(value)


def _stem(config: str) -> str:
    path, _, arg = config.partition(":")
    return pathlib.Path(path).stem + (f"-{arg}" if arg else "")


def validate(config: str, runs: dict[str, list[str]], check_data: bool = True) -> dict[str, int]:
    """Build every run's config before any starts; report all errors at once.

    Returns each run's total step count."""
    from lumina_jax.train.config import ConfigError, build, load_config

    totals, errors = {}, []
    for name, overrides in runs.items():
        try:
            totals[name] = build(load_config(config, overrides), check_data).total_steps
        except ConfigError as e:
            errors.append(f"  {name}: {e}")
    if errors:
        raise ConfigError("invalid sweep runs (none started):\n" + "\n".join(errors))
    return totals


def train_args(config: str, workdir: str, overrides: list[str]) -> list[str]:
    return ["--config", config, "--workdir", workdir, *overrides]


def run_locally(config: str, root: str, runs: dict[str, list[str]],
                totals: dict[str, int]) -> list[str]:
    """Run one after another, each in its own process (a crash or OOM spares the rest)."""
    failed = []
    for i, (name, overrides) in enumerate(runs.items()):
        workdir = os.path.join(root, name)
        records = read_metrics(workdir)
        if records and records[-1]["step"] >= totals[name]:
            print(f"[{i + 1}/{len(runs)}] {name}: done ({totals[name]} steps), skipped")
            continue
        print(f"[{i + 1}/{len(runs)}] {name}", flush=True)
        cmd = [sys.executable, "-m", "lumina_jax.cli", "train",
               *train_args(config, workdir, overrides)]
        if subprocess.run(cmd, check=False).returncode:
            failed.append(name)
    return failed


def read_metrics(workdir) -> list[dict]:
    """Loss records of a run, the last one of each step (a resumed run re-logs steps)."""
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.is_file():
        return []
    by_step = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        if "loss" in rec:
            by_step[rec["step"]] = rec
    return [by_step[s] for s in sorted(by_step)]


def _flatten(tree, prefix="") -> dict:
    """{"a.b": value} for nested dicts and lists of dicts (stages); other lists are values."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    out = {}
    for k, v in items:
        key = f"{prefix}{k}"
        if isinstance(v, dict) or (isinstance(v, list) and any(isinstance(x, dict) for x in v)):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def summary_rows(root) -> tuple[list[str], list[dict]]:
    """(columns, one row per run under root): config keys that differ, then metrics."""
    root = pathlib.Path(root)
    runs = sorted(p for p in root.iterdir() if (p / "metrics.jsonl").is_file()
                  or (p / "config.json").is_file())
    configs = {}
    for p in runs:
        cfg = p / "config.json"
        configs[p.name] = _flatten(json.loads(cfg.read_text())) if cfg.is_file() else {}
    keys = sorted({k for c in configs.values() for k in c})
    # The overrides a sweep varied are exactly the config values that differ between runs.
    varied = [k for k in keys if len({json.dumps(c.get(k)) for c in configs.values()}) > 1]
    rows, metric_cols = [], []
    for p in runs:
        records = read_metrics(p)
        row = {"run": p.name, **{k: configs[p.name].get(k) for k in varied},
               "steps": records[-1]["step"] if records else 0}
        names = [m for m in SUMMARY_METRICS if any(m in r for r in records)]
        names += sorted({k for r in records for k in r if k.startswith("loss/")})
        for m in names:
            values = [(r["step"], r[m]) for r in records if isinstance(r.get(m), (int, float))]
            if not values:
                continue
            row[m] = values[-1][1]
            if m.startswith("loss"):
                best_step, best = min(values, key=lambda sv: sv[1])
                row[f"best {m}"] = best
                if m == "loss":
                    row["best step"] = best_step
        metric_cols += [c for c in row if c not in metric_cols and c not in varied
                        and c not in ("run", "steps")]
        rows.append(row)
    rows.sort(key=lambda r: (r.get("loss") is None or not math.isfinite(r["loss"]),
                             r.get("loss") or 0.0))  # best final loss first
    return ["run", *varied, "steps", *metric_cols], rows


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return v if isinstance(v, str) else json.dumps(v)


def summarize(root) -> str:
    """Write root/summary.md, summary.csv and loss_curves.png; return the markdown."""
    columns, rows = summary_rows(root)
    if not rows:
        raise SystemExit(f"sweep --summarize: no runs (folders with metrics.jsonl) in {root}")
    md = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    md += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    text = "\n".join(md) + "\n"
    pathlib.Path(root, "summary.md").write_text(text)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({c: r[c] if isinstance(r.get(c), (int, float)) else _cell(r.get(c))
                         for c in columns})
    pathlib.Path(root, "summary.csv").write_text(buf.getvalue())
    plot_losses(root, [r["run"] for r in rows], os.path.join(root, "loss_curves.png"))
    return text


def plot_losses(root, names: list[str], out: str) -> None:
    """One panel for the loss (mean over tasks), one per task and one per validation
    loss (eval/loss/<task>); a line per run."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    curves = {n: read_metrics(os.path.join(root, n)) for n in names}
    panels = ["loss", *sorted({k for rs in curves.values() for r in rs for k in r
                               if k.startswith(("loss/", "eval/loss/"))})]
    cols = min(len(panels), 3)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.5 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        for name, records in curves.items():
            points = [(r["step"], r[panel]) for r in records if panel in r]
            if points:
                ax.plot(*zip(*points), marker="." if len(points) < 20 else None, label=name)
        ax.set_title(panel)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
