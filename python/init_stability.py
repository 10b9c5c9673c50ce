"""The article's gesture model's stability over seeds: for each initialisation and compositing mode, train
several seeds briefly on MNIST and report each run's final test MSE, and how many collapsed to the
all-black image."""

import argparse
from dataclasses import replace

from splatkern import data, train
from splatkern.facts import COMPOSITES
from splatkern.models import ARTICLE_GESTURE, INITS

COLLAPSED = 0.9  # a run whose test MSE is above this fraction of the all-black image's has collapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", default=str(data.DEFAULT_DATA_DIR))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--inits", nargs="+", default=list(INITS), choices=INITS)
    parser.add_argument("--composites", nargs="+", default=["max"], choices=COMPOSITES)
    parser.add_argument("--temperature", type=float, default=1.0, help="smoothmax's")
    parser.add_argument("--out", default="runs/init-stability")
    args = parser.parse_args()

    test_images = data.load("mnist", "test", args.data_dir, limit=1000).images
    black_mse = float((test_images**2).mean())
    print(f"{args.steps} steps of batch 16 on MNIST; test MSE on 1000 test images (all-black image: {black_mse:.4f})")
    print("| init | composite | " + " | ".join(f"seed {s}" for s in range(args.seeds)) + " | collapsed |")
    print("|---|---|" + "---:|" * (args.seeds + 1))
    for init in args.inits:
        for composite in args.composites:
            results = []
            for seed in range(args.seeds):
                model = replace(ARTICLE_GESTURE, init=init, composite=composite, temperature=args.temperature)
                config = train.TrainConfig(model=model, dataset="mnist", data_dir=args.data_dir,
                                           train_limit=16 * args.steps, test_limit=1000, epochs=1, seed=seed,
                                           animation_samples=0, out_dir=f"{args.out}/{init}-{composite}-{seed}")
                results.append(train.train(config, progress=False).history[-1]["test_mse"])
            collapsed = sum(mse > COLLAPSED * black_mse for mse in results)
            print(f"| {init} | {composite} | " + " | ".join(f"{mse:.4f}" for mse in results)
                  + f" | {collapsed} of {args.seeds} |", flush=True)


if __name__ == "__main__":
    main()
