"""The ``piwsl`` command: thin sub-commands over the library (argument parsing only).

    piwsl train [CONFIG] [key=value ...] [--resume] [--run-dir DIR]
    piwsl evaluate CHECKPOINT DATA [--out DIR] [--batch-size N] [--write-predictions]
    piwsl predict MODEL FRAMES OUT     (energies, forces, a Δ model's prior share → extxyz)
    piwsl md CHECKPOINT START_STRUCTURES [--ensemble nve|langevin|bussi|nose-hoover] ...
    piwsl label INPUT OUTPUT --method gfn2-xtb|hf|dft|mp2|ccsd(t)|cbs|ase:MODULE.CLASS ...
    piwsl sample ...   (structures by MD with a cheap calculator, for labelling)
    piwsl --version

``CONFIG`` is a YAML file or ``builtin:NAME``; without it ``piwsl train`` runs the packaged
``builtin:ethanol`` job. ``OMP_WAIT_POLICY`` defaults to ``PASSIVE`` (see :func:`main`). Errors
piwsl raises on purpose print as ``error: <message>`` with exit status 2; ``--debug`` shows the
traceback instead. Warnings piwsl logs print as ``warning: <message>`` on stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from piwsl import __version__
from piwsl.errors import PiwslError


def _add_read_options(parser: argparse.ArgumentParser) -> None:
    """How a data file is read and a model with a prior is run (evaluate, predict)."""
    parser.add_argument("--batch-size", type=int, default=32, help="frames per batch, default 32")
    parser.add_argument(
        "--energy-key", default=None, help="energy label key (default: REF_energy, energy)"
    )
    parser.add_argument(
        "--forces-key", default=None, help="forces label key (default: REF_forces, forces)"
    )
    parser.add_argument("--energy-unit", default="eV", help="energy unit of the file, default eV")
    parser.add_argument("--length-unit", default="Å", help="length unit of the file, default Å")
    parser.add_argument(
        "--stress-key", default=None, help="stress label key (default: REF_stress, stress)"
    )
    parser.add_argument(
        "--stress-unit",
        default=None,
        help="stress unit of the file (eV/Å^3, GPa, kbar, …), default energy/length³",
    )
    parser.add_argument(
        "--allow-prior-mismatch",
        action="store_true",
        help="run a Δ-learning model even if the installed prior differs from the recorded one",
    )
    parser.add_argument(
        "--prior-cache-dir", default=None, help="folder of the prior cache (default: automatic)"
    )
    parser.add_argument(
        "--prior-workers", type=int, default=1, help="processes computing the prior, default 1"
    )
    parser.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="piwsl",
        description="Interatomic potentials with physics-informed weak supervision (PITC/PISC).",
    )
    parser.add_argument("--version", action="version", version=f"piwsl {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of piwsl errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p_train = sub.add_parser("train", help="train a potential from a YAML config")
    p_train.add_argument(
        "config",
        nargs="?",
        default=None,
        help="YAML config or builtin:NAME (default: builtin:ethanol)",
    )
    p_train.add_argument(
        "overrides", nargs="*", help="dotted overrides, e.g. training.max_epochs=5"
    )
    p_train.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p_train.add_argument("--run-dir", default=None, help="run directory (overrides output.run_dir)")
    p_train.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )

    p_eval = sub.add_parser("evaluate", help="evaluate a model or checkpoint on a data file")
    p_eval.add_argument("checkpoint", help="model file (.pt) or training checkpoint (.ckpt)")
    p_eval.add_argument("data", help="data file (extxyz, ASE db, rMD17 npz) or builtin:NAME")
    p_eval.add_argument("--out", default=None, help="output folder (default: next to CHECKPOINT)")
    p_eval.add_argument("--name", default=None, help="prefix of the output files")
    _add_read_options(p_eval)
    p_eval.add_argument(
        "--write-predictions",
        action="store_true",
        help="also write the predictions (energies, forces, the prior's share) to "
        "<out>/<name>_predictions.extxyz; frames without labels get theirs written anyway",
    )

    p_pred = sub.add_parser(
        "predict",
        help="write a model's energies and forces for every frame of a file to extxyz",
        description="Predict energies (PRED_energy, eV) and forces (PRED_forces, eV/Å) for every "
        "frame of FRAMES and write them to OUT (extxyz), with the prior's share (PRIOR_energy, "
        "PRIOR_forces) for Δ-learning models and the frames' own labels (REF_*) where present.",
    )
    p_pred.add_argument("model", help="model file (.pt) or training checkpoint (.ckpt)")
    p_pred.add_argument("frames", help="structures: extxyz, any ASE format, ASE db, rMD17 npz")
    p_pred.add_argument("out", help="output extxyz")
    _add_read_options(p_pred)
    from piwsl.labelling.cli import add_label_parser, add_sample_parser
    from piwsl.md.cli import add_md_parser

    for add in (add_md_parser, add_label_parser, add_sample_parser):
        p_sub = add(sub)  # each sets `func` as its default
        if not any("--debug" in a.option_strings for a in p_sub._actions):
            p_sub.add_argument(
                "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
            )
    return parser


def _train(args: argparse.Namespace, console) -> int:
    from piwsl.config import load_config
    from piwsl.training import train

    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not config.startswith("builtin:"):
        config, overrides = None, [config, *overrides]  # `piwsl train key=value ...`
    cfg = load_config(config, overrides)
    train(cfg, run_dir=args.run_dir, resume=args.resume, console=console)
    return 0


def _label_keys(args: argparse.Namespace):
    """The label keys and units of the ``evaluate``/``predict`` options."""
    from piwsl.data import LabelKeys

    return LabelKeys(
        args.energy_key,
        args.forces_key,
        args.energy_unit,
        args.length_unit,
        args.stress_key,
        args.stress_unit,
    )


def _evaluate(args: argparse.Namespace, console) -> int:
    from piwsl.evaluation import evaluate_checkpoint

    keys = _label_keys(args)
    evaluate_checkpoint(
        args.checkpoint,
        args.data,
        out_dir=args.out,
        batch_size=args.batch_size,
        name=args.name,
        console=console,
        keys=keys,
        allow_prior_mismatch=args.allow_prior_mismatch,
        prior_cache_dir=args.prior_cache_dir,
        prior_workers=args.prior_workers,
        write_predictions=args.write_predictions,
    )
    return 0


def _predict(args: argparse.Namespace, console) -> int:
    from rich.markup import escape

    from piwsl.evaluation.report import check_read_units
    from piwsl.predictions import predict_file
    from piwsl.priors import PriorUse

    keys = _label_keys(args)
    check_read_units(keys)
    use = PriorUse(
        allow_mismatch=args.allow_prior_mismatch,
        cache_dir=args.prior_cache_dir,
        workers=args.prior_workers,
        progress=True,
    )
    path, n, prior = predict_file(
        args.model, args.frames, args.out, keys=keys, batch_size=args.batch_size, prior=use
    )
    share = f", with the prior {prior.get('name')}'s share (PRIOR_*)" if prior else ""
    console.print(
        f"[bold]predictions[/] {n} frames: energies (PRED_energy, eV) and forces (PRED_forces, "
        f"eV/Å){escape(share)} → {escape(str(path))}"
    )
    return 0


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (captured output, redirected logs)."""

    def __init__(self) -> None:
        super().__init__()
        self._piwsl_cli = True

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def show_warnings() -> None:
    """piwsl's logged warnings go to stderr as ``warning: …`` lines (recognisable in logs and
    by the benchmark driver, which records them); added once per process."""
    logger = logging.getLogger("piwsl")
    if any(getattr(h, "_piwsl_cli", False) for h in logger.handlers):
        return
    handler = _StderrHandler()
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("warning: %(message)s"))
    logger.addHandler(handler)


def main(argv: list[str] | None = None) -> int:
    # Idle OpenMP threads sleep instead of spinning: on a shared CPU, spinning torch threads
    # made training steps ~50× slower whenever another process held a core. Must be set before
    # torch starts its thread pool; an explicit OMP_WAIT_POLICY in the environment wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from piwsl.terminal import make_console

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # overrides may come after options (`piwsl train c.yaml --resume training.lr=1e-3`)
        if args.command != "train" or any(a.startswith("-") or "=" not in a for a in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    if args.command is None:
        parser.print_help()
        return 2
    console = make_console()
    show_warnings()
    try:
        if args.command == "train":
            return _train(args, console)
        if args.command == "evaluate":
            return _evaluate(args, console)
        if args.command == "predict":
            return _predict(args, console)
        return args.func(args)
    except PiwslError as err:
        if args.debug:
            raise
        make_console(stderr=True).print(
            f"error: {err}", style="bold red", markup=False, highlight=False, soft_wrap=True
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
