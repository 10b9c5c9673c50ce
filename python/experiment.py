"""What the article's three experiments share: flags, train (or resume), evaluate, draw, and print
our figures beside the article's."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from splatkern import data, evaluate, pictures, train
from splatkern.models import ModelConfig


def run(name: str, model: ModelConfig, dataset: str, epochs: int, article: dict, *, k: int = 10,
        train_limit: int | None = None, test_limit: int | None = None) -> int:
    parser = argparse.ArgumentParser(description=f"the article's {name} experiment")
    parser.add_argument("--data-dir", default=str(data.DEFAULT_DATA_DIR))
    parser.add_argument("--out", default=f"runs/{name}")
    parser.add_argument("--epochs", type=int, default=epochs, help=f"the article's: {epochs}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--init", default=model.init, help="sweep (stable), default, glorot (the article's)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--scaling", default="none", choices=evaluate.SCALINGS, help="feature scaling for k-means")
    args = parser.parse_args()

    config = train.TrainConfig(model=ModelConfig(**{**vars(model), "init": args.init}), dataset=dataset,
                               data_dir=args.data_dir, train_limit=train_limit, test_limit=test_limit,
                               epochs=args.epochs, seed=args.seed, device=args.device, out_dir=args.out)
    try:
        trained = train.train(config, resume=args.resume)
        train_set = data.load(dataset, "train", args.data_dir, limit=train_limit)
        test_set = data.load(dataset, "test", args.data_dir, limit=test_limit)
    except data.DatasetNotFound as error:
        print(f"{name}: {error}", file=sys.stderr)
        return 2
    report = evaluate.evaluate(trained.model, train_set, test_set, k=k, seed=args.seed, scaling=args.scaling)
    evaluate.write_report(report, args.out)
    _, _, animation = train.load_trained(trained.checkpoint)
    pictures.write_all(trained.model.cpu(), test_set.images[:16], animation, args.out)
    last = trained.history[-1]
    print(f"\n{name}, {last['epoch']} epochs, seed {args.seed}, init {args.init}")
    print(f"train pixel accuracy {last['train_accuracy']:.4f} (article {article.get('train_accuracy', '-')}), "
          f"train MSE {last['train_loss']:.4f} (article {article.get('train_mse', '-')})")
    print(evaluate.markdown(report))
    print(f"article: {article}")
    print(f"everything is in {Path(args.out).resolve()}")
    return 0
