"""The article's settings are what `splatkern train` runs with no flags, and what the MNIST experiment
script (python/mnist_gesture.py) runs: the velocity-gesture model, 25 steps of at most 3 px on a
28 px canvas, the MLP encoder, batch 16, Adam at learning rate 1e-3, 50 epochs, and k-means with
k = 10 for the clustering table (docs/results-autoencoder.md). The article's init is not the default
on purpose: it collapses on most seeds (test_train.py, the sweep init)."""

import ast
from dataclasses import asdict
from pathlib import Path

import torch

from splatkern import cli, train
from splatkern.models import ModelConfig, build_model

REPO = Path(__file__).resolve().parents[1]

ARTICLE_MODEL = dict(model="gesture", encoder="mlp", points=25, step_size=3.0, resolution=28)
ARTICLE_TRAINING = dict(batch_size=16, lr=1e-3, epochs=50)
ARTICLE_CLUSTERS = 10


def test_splatkern_train_without_flags_runs_the_articles_settings():
    config = cli._train_config(cli._parser().parse_args(["train"]))
    assert config.out_dir == train.TrainConfig.out_dir, "`splatkern train` without --out uses another command's folder"
    assert config == train.TrainConfig()  # the flags' defaults add nothing to the dataclasses'
    assert {name: getattr(config, name) for name in ARTICLE_TRAINING} == ARTICLE_TRAINING
    model = build_model(config.model)
    decoder = model.decoder
    assert type(decoder).__name__ == "GestureDecoder" and config.model.model == ARTICLE_MODEL["model"]
    assert decoder.points == ARTICLE_MODEL["points"]
    assert decoder.max_step * config.model.resolution == ARTICLE_MODEL["step_size"]
    assert (config.model.encoder, config.model.resolution) == (ARTICLE_MODEL["encoder"], ARTICLE_MODEL["resolution"])
    image, _ = model(torch.zeros(2, 28, 28))
    assert image.shape == (2, 28, 28)


def test_eval_clusters_with_the_articles_k():
    assert cli._parser().parse_args(["eval"]).k == ARTICLE_CLUSTERS


def test_the_mnist_experiment_script_runs_the_same_settings():
    """python/mnist_gesture.py's run(...) call, read from its source (running it trains for an hour)."""
    tree = ast.parse((REPO / "python" / "mnist_gesture.py").read_text())
    (call,) = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "run"]
    model_call = call.args[1]
    assert model_call.func.id == "ModelConfig"
    script_model = ModelConfig(**{keyword.arg: ast.literal_eval(keyword.value) for keyword in model_call.keywords})
    (epochs,) = [ast.literal_eval(keyword.value) for keyword in call.keywords if keyword.arg == "epochs"]
    assert {name: asdict(script_model)[name] for name in ARTICLE_MODEL} == ARTICLE_MODEL
    assert epochs == ARTICLE_TRAINING["epochs"] == train.TrainConfig().epochs
    # the CLI's default model differs only in leaving the marker count to the model's default (25)
    assert asdict(script_model) == asdict(train.TrainConfig().model) | {"points": ARTICLE_MODEL["points"]}
