"""The `fleetsim` command line.

Exit codes: 0 success; 2 bad input (one line naming the file and key path, no
traceback); 1 internal failure.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fleetsim import PROJECT_ROOT
from fleetsim.errors import ConfigError, FleetsimError
from fleetsim.types import OptimizerSpec

if TYPE_CHECKING:
    from fleetsim.api import Progress

DEFAULT_SCENARIO = PROJECT_ROOT / "scenarios" / "default.yaml"
OPTIMIZERS = {"sgd": OptimizerSpec("sgd"), "momentum": OptimizerSpec("sgd", momentum=0.9),
              "adam": OptimizerSpec("adam")}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.command(args) or 0)
    except ConfigError as err:
        print(f"fleetsim: {err}", file=sys.stderr)
        return 2
    except FleetsimError as err:
        print(f"fleetsim: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fleetsim: interrupted; the rounds finished so far are on disk", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleetsim", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a scenario")
    run.add_argument("scenario", nargs="?", default=str(DEFAULT_SCENARIO))
    run.add_argument("--out", help="output directory (must not hold a run already)")
    run.add_argument("--seed", type=int)
    run.add_argument("--rounds", type=int)
    run.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                     help="override a scenario key (repeatable)")
    run.add_argument("--no-live", action="store_true", help="plain lines instead of the live view")
    run.add_argument("--dry-run", action="store_true",
                     help="clock, fleet and planning only: no data, weights or training")
    run.set_defaults(command=cmd_run)

    compare = sub.add_parser("compare", help="one scenario under several policies")
    compare.add_argument("scenario")
    compare.add_argument("--policies", required=True, help="comma-separated policy names")
    compare.add_argument("--out", help="output directory (must not hold a comparison)")
    compare.add_argument("--seed", type=int)
    compare.add_argument("--rounds", type=int)
    compare.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")
    compare.add_argument("--no-live", action="store_true")
    compare.add_argument("--modes", default="", metavar="sync,async",
                         help="each policy in each mode, side by side at equal simulated time")
    compare.set_defaults(command=cmd_compare)

    paper = sub.add_parser("paper", help="the reproduction suite: runs, tables, claims")
    paper.add_argument("suite", nargs="?", help="suite file (default paper/suite.yaml)")
    paper.add_argument("--reduced", action="store_true", help="the CI-sized version")
    paper.add_argument("--only", default="", metavar="NAME,...",
                       help="run and report only these experiments of the suite")
    paper.add_argument("--out", help="run directories (default runs/paper[-reduced])")
    paper.add_argument("--doc", help="the document (default docs/results.md; with "
                       "--reduced OUT/results.md)")
    paper.add_argument("--archive", help="the compact results kept in the repository (default "
                       "beside the suite file, <suite>-archive/; none with --reduced)")
    paper.add_argument("--no-archive", action="store_true", help="keep no archive")
    paper.add_argument("--jobs", type=int, help="runs at once, one process and host each "
                       "(default: the number of CPUs)")
    paper.set_defaults(command=cmd_paper)

    tune = sub.add_parser("tune", help="grid-search a policy's settings on the validation "
                          "split")
    tune.add_argument("scenario")
    tune.add_argument("--policy", required=True, help="the policy to tune")
    tune.add_argument("--grid", action="append", default=[], metavar="KEY.PATH=V1,V2,...",
                      help="values to try for a key (repeatable: the cartesian product)")
    tune.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")
    tune.add_argument("--rounds", type=int)
    tune.add_argument("--out", help="output directory (must not hold a tuning)")
    tune.add_argument("--jobs", type=int, help="runs at once (default: the number of CPUs)")
    tune.set_defaults(command=cmd_tune, seed=None)

    resume = sub.add_parser("resume", help="continue a killed run from its last checkpoint")
    resume.add_argument("dir", help="the run's output directory")
    resume.add_argument("--no-live", action="store_true")
    resume.set_defaults(command=cmd_resume)

    report = sub.add_parser("report", help="summary, CSV files and plots of a run")
    report.add_argument("dir", help="the run's output directory")
    report.set_defaults(command=cmd_report)

    validate = sub.add_parser("validate", help="check a scenario file")
    validate.add_argument("scenario")
    validate.set_defaults(command=cmd_validate)

    pretrain = sub.add_parser("pretrain", help="pretrain zoo models on the server corpus")
    pretrain.add_argument("models", nargs="*", help="zoo names (default: all)")
    pretrain.set_defaults(command=cmd_pretrain)

    cost = sub.add_parser("cost", help="predicted and measured cost of one plan, as JSON")
    cost.add_argument("--model", required=True, help="zoo name (see `fleetsim zoo`)")
    cost.add_argument("--plan", required=True, help="full | head | last:N | lora:R | width:S")
    cost.add_argument("--batch", type=int, default=16)
    cost.add_argument("--seq", type=int, default=80)
    cost.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="sgd")
    cost.set_defaults(command=cmd_cost)

    zoo = sub.add_parser("zoo", help="list the model zoo")
    zoo.set_defaults(command=cmd_zoo)
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, str]:
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(args.scenario, item, "--set needs KEY.PATH=VALUE")
        overrides[key] = value
    if args.seed is not None:
        overrides["seed"] = str(args.seed)
    if args.rounds is not None:
        overrides["rounds"] = str(args.rounds)
    return overrides


def cmd_validate(args: argparse.Namespace) -> int:
    from fleetsim.config.scenario import load_scenario

    scenario = load_scenario(args.scenario)
    print(f"{args.scenario}: ok ({scenario.num_devices} devices, {scenario.rounds} rounds, "
          f"policy {scenario.policy.name}, model {scenario.model.name})")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from fleetsim.api import run

    run(args.scenario, out=args.out, progress=_progress(args), dry_run=args.dry_run,
        settings=_overrides(args))
    return 0


def _progress(args: argparse.Namespace) -> Progress:
    """The live view in a terminal, plain lines elsewhere (logs) or with --no-live."""
    return "live" if not args.no_live and sys.stdout.isatty() else "lines"


def cmd_report(args: argparse.Namespace) -> int:
    from fleetsim.views.report import report

    out_dir = Path(args.dir)
    if not (out_dir / "rounds.jsonl").is_file():
        raise ConfigError(out_dir, "rounds.jsonl", "not a run directory (no rounds.jsonl)")
    figure = report(out_dir)
    print(f"plots in {figure}; CSV files in {out_dir}")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from fleetsim.api import is_complete, resume

    out_dir = Path(args.dir)
    was_complete = is_complete(out_dir)
    result = resume(out_dir, progress=_progress(args))
    if was_complete:
        print(f"{out_dir}: the run is complete ({len(result.rounds)} rounds)")
    return 0


def cmd_paper(args: argparse.Namespace) -> int:
    from fleetsim.suite.claims import write_document
    from fleetsim.suite.paper import DEFAULT_SUITE, run_suite

    suite_file = Path(args.suite) if args.suite else DEFAULT_SUITE
    out_dir = Path(args.out or f"runs/paper{'-reduced' if args.reduced else ''}")
    doc = Path(args.doc) if args.doc else (out_dir / "results.md" if args.reduced
                                           else PROJECT_ROOT / "docs" / "results.md")
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    archive = None if args.no_archive else Path(args.archive) if args.archive else \
        None if args.reduced else suite_file.with_name(f"{suite_file.stem}-archive")
    suite = run_suite(suite_file, out_dir, args.reduced, sys.stdout, names,
                      _jobs(args, "paper"), archive)
    command = " ".join(["fleetsim paper", *(["--reduced"] if args.reduced else []),
                        *([f"--only {args.only}"] if names else [])])
    for check in write_document(suite, out_dir, doc, command, args.reduced):
        print(f"{check.verdict:>24}: {check.claim} (measured {check.measured})")
    print(f"document: {doc}")
    return 0


def _jobs(args: argparse.Namespace, command: str) -> int | None:
    if args.jobs is not None and args.jobs < 1:
        raise ConfigError(f"fleetsim {command}", "--jobs", "must be >= 1")
    return int(args.jobs) if args.jobs is not None else None


def cmd_tune(args: argparse.Namespace) -> int:
    """Run the policy's grid on the validation split; write tune.json and tune.md; print
    the table and the choice (see fleetsim.suite.tuning)."""
    import json

    from fleetsim.api import output_dir
    from fleetsim.config.scenario import load_scenario
    from fleetsim.runtime.batch import default_jobs, run_batch
    from fleetsim.suite.tuning import (
        TUNE_FILE,
        apply,
        collect,
        label,
        parse_grid,
        table,
        trial_runs,
    )
    from fleetsim.views.compare import with_policy
    from fleetsim.views.dashboard import fmt
    from fleetsim.views.metrics import write_atomic
    from policies import registered

    source = Path(args.scenario)
    grid = parse_grid(args.grid, "fleetsim tune")
    jobs = _jobs(args, "tune") or default_jobs()
    if args.policy not in registered() and ":" not in args.policy:
        raise ConfigError("fleetsim tune", "--policy", f"unknown policy {args.policy!r}; "
                          f"registered: {', '.join(registered())}")
    overrides = _overrides(args)
    # --set policy.params.* belong to the tuned policy: applied after the switch to it
    params = {k: v for k, v in overrides.items() if k.startswith("policy.params.")}
    scenario = with_policy(load_scenario(source, {k: v for k, v in overrides.items()
                                                  if k not in params}), args.policy)
    scenario = apply(scenario, params, source)
    out_dir = output_dir(args.out, scenario.output.dir, f"{scenario.name}-tune",
                         marker=TUNE_FILE)
    trials = trial_runs(scenario, source, grid, out_dir)  # every setting checked first
    settings = {run.out_dir: setting for setting, run in trials}
    run_batch([run for _, run in trials], jobs, lambda run, outcome: print(
        f"{run.out_dir.name} {label(settings[run.out_dir])}: validation accuracy "
        f"{fmt(outcome.final_accuracy)} ({outcome.seconds:.0f} s)", flush=True))
    tuned = {"scenario": str(source), "policy": args.policy, "seed": scenario.seed,
             "split": "validation", **collect(grid, trials, out_dir)}
    write_atomic(out_dir / TUNE_FILE, json.dumps(tuned, indent=1))
    write_atomic(out_dir / "tune.md", table(tuned))
    print(table(tuned), end="")
    print(f"chose {label(tuned['choice'])} (validation accuracy "
          f"{fmt(tuned['choice_validation_accuracy'])}); {out_dir / TUNE_FILE}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from fleetsim.api import compare
    from fleetsim.views.compare import markdown_table

    names = [n.strip() for n in args.policies.split(",") if n.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    comparison = compare(args.scenario, names, out=args.out, progress=_progress(args),
                         settings=_overrides(args), modes=modes)
    print(markdown_table(comparison.rows), end="")
    print(f"comparison written to {comparison.dir}/comparison.csv, comparison.md and "
          "comparison.png")
    return 0


def cmd_cost(args: argparse.Namespace) -> int:
    import json

    import torch

    from fleetsim.device.cost import estimate_cost, parse_plan
    from fleetsim.device.training import measure_step
    from fleetsim.zoo.model import ZOO

    if args.model not in ZOO:
        raise ConfigError("fleetsim cost", "--model", f"unknown zoo model {args.model!r}; "
                          f"known: {', '.join(ZOO)}")
    config = ZOO[args.model].config
    if not 1 <= args.batch <= 4096 or not 1 <= args.seq <= config.max_seq_len - 1:
        raise ConfigError("fleetsim cost", "--batch/--seq", "out of range (seq at most "
                          f"{config.max_seq_len - 1})")
    try:
        plan = parse_plan(args.plan, config, args.batch, OPTIMIZERS[args.optimizer])
    except ValueError as err:
        raise ConfigError("fleetsim cost", "--plan", str(err)) from None
    torch.set_num_threads(1)
    cost = estimate_cost(config, plan, args.seq)
    measured_peak, _ = measure_step(config, plan, args.seq)
    print(json.dumps({"model": args.model, "plan": args.plan, "batch": args.batch,
                      "seq": args.seq, "optimizer": args.optimizer,
                      "predicted_peak_bytes": cost.predicted_peak_bytes,
                      "measured_peak_bytes": measured_peak,
                      "flops_per_step": cost.flops_per_step,
                      "upload_bytes": cost.upload_bytes,
                      "download_bytes": cost.download_bytes}))
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from rich.progress import Progress, TaskID

    from fleetsim.zoo.model import ZOO
    from fleetsim.zoo.pretrain import is_cached, pretrain

    names = args.models or list(ZOO)
    for name in names:
        if name not in ZOO:
            raise ConfigError("fleetsim pretrain", name,
                              f"unknown zoo model; known: {', '.join(ZOO)}")
    with Progress() as progress:
        for name in names:
            if is_cached(name):
                progress.console.print(f"{name}: cached")
                continue
            task = progress.add_task(f"pretraining {name}", total=ZOO[name].pretrain_steps)

            def show(step: int, _total: int, loss: float, task: TaskID = task,
                     name: str = name) -> None:
                progress.update(task, completed=step, description=f"pretraining {name} "
                                f"loss {loss:.3f}")

            pretrain(ZOO[name], show)
    return 0


def cmd_zoo(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from fleetsim.device.cost import group_param_counts
    from fleetsim.zoo.model import ZOO
    from fleetsim.zoo.pretrain import pretrain_record

    table = Table("name", "blocks", "width", "heads", "parameters", "pretrained at step",
                  "sonnets loss / acc", "plays loss / acc",
                  caption="pretrained on the Sonnets; held-out sonnets and the reserved "
                          "plays (device-like text) scored; - : not pretrained yet")
    for name, entry in ZOO.items():
        cfg = entry.config
        params = sum(group_param_counts(cfg).values())
        record = pretrain_record(name)
        scored = [f"{record[k]['loss']:.3f} / {record[k]['accuracy']:.3f}" if record else "-"
                  for k in ("validation", "reserved_plays")]
        table.add_row(name, str(cfg.n_layer), str(cfg.n_embd), str(cfg.n_head), f"{params:,}",
                      str(record["best_step"]) if record else "-", *scored)
    Console(width=int(os.environ.get("COLUMNS", 100))).print(table)
    return 0
