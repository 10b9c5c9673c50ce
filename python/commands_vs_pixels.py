"""Which drawing configuration makes the gesture model's commands cluster better than raw pixels.

Trains the gesture autoencoder in every configuration of a grid (primitive x strokes per image x
composite x encoder) over several seeds, evaluates each run (test reconstruction; k-means and a
linear probe on pixels, on the commands and on their shape, ``splatkern.evaluate``), and tabulates
each configuration's mean and standard deviation over the seeds, and its collapsed seeds.

    python python/commands_vs_pixels.py --dataset digits --epochs 25 --seeds 0 1 2 3 4 \\
        --primitives points stroke --strokes 1 2 3 --out runs/commands-vs-pixels
    python python/commands_vs_pixels.py --dataset mnist --data-dir ../shared/data --epochs 10 --seeds 0 1 2

Each run trains into OUT/<dataset>/<configuration>-s<seed>/: a finished run there is evaluated
without training again, an interrupted one resumes. After every run, OUT/<dataset>.json holds every
finished run's report, those of earlier calls with other grids included, and OUT/<dataset>.md the
table; runs go --jobs at a time, one torch thread each. A run's folder does not name its epochs:
runs of another --epochs go into another --out.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path

from splatkern import data, evaluate, train
from splatkern.facts import COMPOSITES
from splatkern.models import ModelConfig
from splatkern.models.encoders import ENCODERS
from splatkern.models.markers import PRIMITIVES

COLLAPSED = 0.9  # a run whose test MSE is above this fraction of the all-black image's has collapsed
SPACES = ("pixels", *evaluate.COMMAND_SPACES)


def configurations(args: argparse.Namespace) -> list[dict]:
    """The grid: every combination of the axes asked for, as ModelConfig fields."""
    axes = itertools.product(args.primitives, args.strokes, args.composites, args.encoders)
    return [dict(primitive=p, strokes=k, composite=c, encoder=e, temperature=args.temperature) for p, k, c, e in axes]


def label(config: dict) -> str:
    """A configuration's name, also its runs' folder prefix."""
    return f"{config['primitive']}-k{config['strokes']}-{config['composite']}-{config['encoder']}"


def run_one(config: dict, seed: int, args: argparse.Namespace) -> dict:
    """Train (or resume, or load) one run and evaluate it under every k-means scaling."""
    import torch  # noqa: PLC0415 - each worker process sets its own thread count

    torch.set_num_threads(1)
    out_dir = Path(args.out) / args.dataset / f"{label(config)}-s{seed}"
    train_config = train.TrainConfig(model=ModelConfig(**config), dataset=args.dataset, data_dir=args.data_dir,
                                     download=False, train_limit=args.train_limit, test_limit=args.test_limit,
                                     epochs=args.epochs, seed=seed, out_dir=str(out_dir), animation_samples=0)
    checkpoint = out_dir / train.CHECKPOINT
    if checkpoint.exists() and asdict(train.saved_config(out_dir)) != asdict(train_config):
        raise ValueError(f"{out_dir} holds a run of another configuration: move it or pick another --out")
    trained = train.train(train_config, resume=checkpoint.exists(), progress=False)
    train_set = data.load(args.dataset, "train", args.data_dir, download=False, limit=args.probe_train_limit)
    test_set = data.load(args.dataset, "test", args.data_dir, download=False, limit=args.test_limit)
    first, *others = args.scalings
    report = evaluate.evaluate(trained.model, train_set, test_set, seed=seed, scaling=first,
                               probe_train_limit=args.probe_train_limit)
    kmeans = {first: {space: report["features"][space]["kmeans"] for space in SPACES}}
    if others:  # only k-means depends on the scaling: the probes and the reconstruction are not redone
        test_features = evaluate.feature_spaces(trained.model, test_set.images)
        labels = test_set.labels.numpy()
        kmeans.update({scaling: {space: evaluate.kmeans_accuracy(test_features[space], labels, seed=seed, scaling=scaling)
                                 for space in SPACES} for scaling in others})
    return {"configuration": config, "seed": seed, "epochs": args.epochs, "reconstruction": report["reconstruction"],
            "probe_accuracy": {space: report["features"][space]["probe_accuracy"] for space in SPACES},
            "dims": {space: report["features"][space]["dims"] for space in SPACES}, "kmeans": kmeans}


def mean_sd(values: list[float], percent: bool = False) -> str:
    scale = 100 if percent else 1
    spread = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{statistics.mean(values) * scale:.2f} ± {spread:.2f}" if percent else \
        f"{statistics.mean(values) * scale:.4f} ± {spread:.4f}"


def table(runs: list[dict], scalings: list[str]) -> list[str]:
    """Per configuration, mean ± sd over its seeds: reconstruction, k-means accuracy (%) per feature
    space and scaling, the commands' lead over pixels in k-means (the first scaling; the mean of the
    per-seed differences, and the smallest), linear probe accuracy (%) per feature space."""
    kmeans_columns = [(space, scaling) for scaling in scalings for space in SPACES]
    lines = ["| configuration | epochs | seeds | collapsed | test MSE | pixel accuracy | "
             + " | ".join(f"k-means {space} ({scaling})" for space, scaling in kmeans_columns) + " | "
             + f"commands − pixels ({scalings[0]}; min) | " + " | ".join(f"probe {space}" for space in SPACES) + " |",
             "|---|---:|---:|---:|---:|---:|" + "---:|" * (len(kmeans_columns) + 1 + len(SPACES))]
    by_label: dict[tuple[str, int], list[dict]] = {}
    for run in runs:
        by_label.setdefault((label(run["configuration"]), run["epochs"]), []).append(run)
    for (name, epochs), group in sorted(by_label.items()):
        rec = [run["reconstruction"] for run in group]
        collapsed = sum(r["mse"] > COLLAPSED * r["black_mse"] for r in rec)
        cells = [name, str(epochs), str(len(group)), str(collapsed), mean_sd([r["mse"] for r in rec]),
                 mean_sd([r["accuracy"] for r in rec])]
        cells += [mean_sd([run["kmeans"][scaling][space]["accuracy"] for run in group], percent=True)
                  for space, scaling in kmeans_columns]
        lead = [100 * (run["kmeans"][scalings[0]]["commands"]["accuracy"] - run["kmeans"][scalings[0]]["pixels"]["accuracy"])
                for run in group]
        cells.append(f"{statistics.mean(lead):+.2f} ({min(lead):+.2f})")
        cells += [mean_sd([run["probe_accuracy"][space] for run in group], percent=True) for space in SPACES]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_results(args: argparse.Namespace, runs: list[dict]) -> None:
    """OUT/<dataset>.json and .md, each replaced whole: an interruption never leaves half a file."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = sorted(runs, key=lambda run: (label(run["configuration"]), run["seed"]))
    header = [f"# Commands against pixels: {args.dataset}", "", "k-means (k = 10, seed = the run's) and probe accuracies in %, mean ± sd over the seeds; "
              f"collapsed: test MSE above {COLLAPSED} x the all-black image's.", ""]
    for name, text in ((f"{args.dataset}.json", json.dumps(runs, indent=1) + "\n"),
                       (f"{args.dataset}.md", "\n".join(header + table(runs, args.scalings)) + "\n")):
        partial = out / (name + ".partial")
        partial.write_text(text)
        os.replace(partial, out / name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="digits", choices=data.DATASETS)
    parser.add_argument("--data-dir", default=str(data.DEFAULT_DATA_DIR))
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--primitives", nargs="+", default=list(PRIMITIVES), choices=PRIMITIVES)
    parser.add_argument("--strokes", type=int, nargs="+", default=[1])
    parser.add_argument("--composites", nargs="+", default=["max"], choices=COMPOSITES)
    parser.add_argument("--temperature", type=float, default=1.0, help="smoothmax's")
    parser.add_argument("--encoders", nargs="+", default=["mlp"], choices=tuple(ENCODERS))
    parser.add_argument("--scalings", nargs="+", default=["none", "standard"], choices=evaluate.SCALINGS,
                        help="feature scalings before k-means (the probe always standardises)")
    parser.add_argument("--train-limit", type=int, help="the first N training images only")
    parser.add_argument("--test-limit", type=int, help="the first N test images only")
    parser.add_argument("--probe-train-limit", type=int, default=10000, help="training images for the probe")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one torch thread each")
    parser.add_argument("--out", default="runs/commands-vs-pixels")
    args = parser.parse_args()
    if min(args.strokes) < 1:
        parser.error("--strokes takes counts of at least 1")

    grid = [(config, seed) for config in configurations(args) for seed in args.seeds]
    previous = Path(args.out) / f"{args.dataset}.json"
    in_grid = {(label(config), seed) for config, seed in grid}
    runs = [run for run in (json.loads(previous.read_text()) if previous.exists() else [])
            if (label(run["configuration"]), run["seed"]) not in in_grid]
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(run_one, config, seed, args): (config, seed) for config, seed in grid}
        for done, future in enumerate(as_completed(futures), 1):
            config, seed = futures[future]
            run = future.result()
            runs.append(run)
            write_results(args, runs)
            kmeans = run["kmeans"][args.scalings[0]]
            print(f"[{done}/{len(grid)}] {label(config)} seed {seed}: test MSE {run['reconstruction']['mse']:.4f}, "
                  + ", ".join(f"k-means {space} {kmeans[space]['accuracy']:.2%}" for space in SPACES), flush=True)
    print("\n".join(table(runs, args.scalings)))
    print(f"everything is in {Path(args.out).resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
