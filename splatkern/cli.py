"""The splatkern command line. train, eval, render and demo need the train extra
(pip install 'splatkern[train]'); doctor and check work on any install."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from dataclasses import fields, replace
from pathlib import Path

import torch

# Only modules a base install can import: pictures imports the train extra's packages, so the
# commands import it when they run (train imports tqdm only while training).
from splatkern import data, evaluate, train
from splatkern.facts import COMPOSITES
from splatkern.models import INITS, MODEL_DEFAULTS, MODELS, PRIMITIVES, ModelConfig
from splatkern.models.encoders import ENCODERS

MODEL_FIELDS = {f.name for f in fields(ModelConfig)}
TRAIN_FIELDS = {f.name for f in fields(train.TrainConfig)} - {"model"}
TRAIN_OUT = train.TrainConfig.out_dir
DEMO_OUT = "runs/demo"
PICTURE_SAMPLES = 16
# The import names of the packages of the `train` extra (pyproject.toml), which every run command needs.
TRAIN_EXTRA = ("tqdm", "sklearn", "torchvision", "PIL", "matplotlib")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    missing = [name for name in getattr(args, "needs", ()) if importlib.util.find_spec(name) is None]
    if missing:
        print(f"splatkern: error: {args.command!r} needs the train extra (no {', '.join(missing)}): "
              "pip install 'splatkern[train]'", file=sys.stderr)
        return 2
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        if hasattr(args, "out_dir"):
            print(f"\ninterrupted; the checkpoint in {args.out_dir} continues with: "
                  f"splatkern train --resume --out {args.out_dir}", file=sys.stderr)
        return 130
    except (data.DatasetNotFound, FileNotFoundError, ValueError) as error:
        print(f"splatkern: error: {error}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="splatkern", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="command")

    # A parent parser per default: argparse shares a parent's actions between the subcommands, so a
    # per-subcommand set_defaults of --out would set it for all of them.
    def run_flags(default_out: str) -> argparse.ArgumentParser:
        flags = argparse.ArgumentParser(add_help=False)
        flags.add_argument("--out", dest="out_dir", default=default_out,
                           help=f"the run's directory: checkpoint, metrics, pictures (default {default_out})")
        flags.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
        flags.add_argument("--threads", type=int, help="torch CPU threads")
        return flags

    data_flags = argparse.ArgumentParser(add_help=False)
    data_flags.add_argument("--data-dir", help=f"where torchvision datasets live (default {data.DEFAULT_DATA_DIR})")
    data_flags.add_argument("--no-download", dest="download", action="store_const", const=False,
                            help="never try to download a missing dataset")
    data_flags.add_argument("--test-limit", type=int, help="use the first N test images")

    fit = commands.add_parser("train", parents=[run_flags(TRAIN_OUT), data_flags], help="train an autoencoder")
    fit.add_argument("--model", choices=MODELS, help="default gesture")
    fit.add_argument("--encoder", choices=tuple(ENCODERS), help="the image encoder (default mlp, the article's)")
    fit.add_argument("--points", type=int, help="markers per image, per stroke for gesture " + _model_default("points"))
    fit.add_argument("--step-size", type=float, help="gesture: largest step per marker, in pixels (default 3)")
    fit.add_argument("--init", choices=INITS, help="sweep (stable, default), default (PyTorch), glorot (the article's)")
    fit.add_argument("--backend", help="splat_render backend (default auto)")
    fit.add_argument("--composite", choices=COMPOSITES,
                     help="how the markers are composited per pixel " + _model_default("composite"))
    fit.add_argument("--temperature", type=float, help="smoothmax's softmax temperature (default 1)")
    fit.add_argument("--primitive", choices=PRIMITIVES,
                     help="gesture: draw the markers as dots or as continuous strokes " + _model_default("primitive"))
    fit.add_argument("--strokes", type=int,
                     help="gesture: pen strokes per image, each with its own start " + _model_default("strokes"))
    fit.add_argument("--dataset", choices=data.DATASETS, help="default digits (scikit-learn's, no files needed)")
    fit.add_argument("--train-limit", type=int, help="use the first N training images")
    fit.add_argument("--epochs", type=int, help="default 50")
    fit.add_argument("--batch-size", type=int, help="global batch size (default 16)")
    fit.add_argument("--lr", type=float, help="Adam learning rate (default 1e-3)")
    fit.add_argument("--seed", type=int, help="default 0")
    fit.add_argument("--resume", action="store_true",
                     help="continue the run in --out; other flags override its settings")
    fit.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    fit.set_defaults(run=_train, command="train", needs=TRAIN_EXTRA)

    judge = commands.add_parser("eval", parents=[run_flags(TRAIN_OUT), data_flags],
                                help="metrics and the clustering table of a run")
    _add_eval_flags(judge)
    judge.set_defaults(run=_eval, command="eval", needs=TRAIN_EXTRA)

    draw = commands.add_parser("render", parents=[run_flags(TRAIN_OUT), data_flags], help="pictures of a run")
    draw.add_argument("--resolution", type=int, default=112, help="size of the redrawn reconstructions (default 112)")
    draw.add_argument("--primitive", choices=PRIMITIVES,
                      help="redraw as dots or strokes (default: as the model draws; strokes need the gesture model)")
    draw.set_defaults(run=_render, command="render", needs=TRAIN_EXTRA)

    demo = commands.add_parser("demo", parents=[run_flags(DEMO_OUT)], help="train the gesture model on the built-in digits, "
                               "then write its pictures and clustering table")
    demo.add_argument("--epochs", type=int, default=train.TrainConfig.epochs,
                      help=f"default {train.TrainConfig.epochs}, as `splatkern train`")
    demo.add_argument("--seed", type=int, default=0)
    _add_eval_flags(demo)
    demo.set_defaults(run=_demo, command="demo", needs=TRAIN_EXTRA)

    doctor = commands.add_parser("doctor", help="what this install has: versions, build, backends and why any "
                                 "is missing")
    doctor.set_defaults(run=_doctor)

    check = commands.add_parser("check", help="check the kernels against the reference on this machine: values, "
                                "winner map, gradients, gradcheck")
    check.add_argument("--backend", help="one backend (default: every compiled or Triton backend available)")
    check.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: the CPU, and CUDA when available)")
    check.add_argument("--quick", action="store_true", help="fewer shapes: a few seconds a backend")
    check.set_defaults(run=_check)
    return parser


def _model_default(setting: str) -> str:
    """A model setting's default for each model, for --help: "(default softor gesture, max static)"."""
    return "(default " + ", ".join(f"{defaults[setting]} {model}" for model, defaults in MODEL_DEFAULTS.items()) + ")"


def _add_eval_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--k", type=int, default=10, help="k-means clusters (default 10)")
    parser.add_argument("--scaling", choices=evaluate.SCALINGS, default="none", help="feature scaling before k-means")
    parser.add_argument("--probe-train-limit", type=int, default=10000,
                        help="training images for the linear probe (default 10000)")


def _train_config(args: argparse.Namespace) -> train.TrainConfig:
    """The defaults (or, with --resume, the run's saved settings) overridden by the flags given. A new
    run's model settings not given are its model's defaults (models.MODEL_DEFAULTS)."""
    base = train.saved_config(args.out_dir) if args.resume else train.TrainConfig()
    given = {name: value for name, value in vars(args).items() if value is not None}
    model_flags = {name: given[name] for name in MODEL_FIELDS & given.keys()}
    model = replace(base.model, **model_flags) if args.resume else ModelConfig(**model_flags)
    return replace(base, model=model, **{name: given[name] for name in TRAIN_FIELDS & given.keys()})


def _train(args: argparse.Namespace) -> int:
    config = _train_config(args)
    trained = train.train(config, resume=args.resume, progress=args.progress)
    if trained.history:
        last = trained.history[-1]
        print(f"epoch {last['epoch']}: test pixel accuracy {last['test_accuracy']:.4f}, MSE {last['test_mse']:.4f}, "
              f"PSNR {last['test_psnr']:.2f} dB; checkpoint {trained.checkpoint}")
    return 0


def _load_run(args: argparse.Namespace):
    """The run in --out: its directory, trained model, configuration and recorded animation."""
    run_dir = Path(args.out_dir)
    return (run_dir, *train.load_trained(run_dir / train.CHECKPOINT, args.device or "cpu"))


def _dataset(args: argparse.Namespace, config: train.TrainConfig, split: str, limit: int | None) -> data.ImageSet:
    """The run's dataset, from --data-dir / --no-download when given."""
    data_dir = getattr(args, "data_dir", None) or config.data_dir
    download = getattr(args, "download", None)
    return data.load(config.dataset, split, data_dir, download=config.download if download is None else download,
                     limit=limit)


def _eval(args: argparse.Namespace) -> int:
    run_dir, model, config, _ = _load_run(args)
    train_set = _dataset(args, config, "train", args.probe_train_limit)
    test_set = _dataset(args, config, "test", getattr(args, "test_limit", None) or config.test_limit)
    report = evaluate.evaluate(model, train_set, test_set, k=args.k, seed=config.seed, scaling=args.scaling,
                               probe_train_limit=args.probe_train_limit)
    print(evaluate.markdown(report))
    for path in evaluate.write_report(report, run_dir):
        print(f"wrote {path}")
    return 0


def _render(args: argparse.Namespace) -> int:
    from splatkern import pictures  # noqa: PLC0415 - the train extra

    run_dir, model, config, animation = _load_run(args)
    test_set = _dataset(args, config, "test", PICTURE_SAMPLES)
    redraw = dict(resolution=getattr(args, "resolution", pictures.HIGH_RES), primitive=getattr(args, "primitive", None))
    for path in pictures.write_all(model, test_set.images, animation, run_dir, **redraw):
        print(f"wrote {path}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    config = train.TrainConfig(dataset="digits", epochs=args.epochs, seed=args.seed, out_dir=args.out_dir,
                               device=args.device or "auto")
    print(f"training the gesture model on scikit-learn's digits for {config.epochs} epochs ...")
    train.train(config, progress=True)
    _eval(args)
    _render(args)
    print(f"demo done: pictures and the clustering table are in {Path(args.out_dir).resolve()}")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from splatkern import doctor  # noqa: PLC0415

    print(doctor.report())
    return 0


def _check(args: argparse.Namespace) -> int:
    from splatkern import testing  # noqa: PLC0415

    reports = testing.check_all(args.device, [args.backend] if args.backend else None, quick=args.quick)
    if not reports:
        raise ValueError("no compiled or Triton backend to check here (`splatkern doctor` says why)")
    for report in reports:
        print(report.summary())
    return 0 if all(report.ok for report in reports) else 1
