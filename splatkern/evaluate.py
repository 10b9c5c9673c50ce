"""How much of the class structure the learned commands capture, against raw pixels.

The article's measure: k-means on the test set, each cluster labelled with its majority class,
errors = sum over clusters of (cluster size - majority count), accuracy = 1 - errors / N. A second,
more stable measure: a linear probe (logistic regression fitted on the training set, scored on the
test set). Both are computed on raw pixels, on the model's command features and on the commands'
shape (:func:`shape_features`: what is left once where the drawing sits and how large it is are
taken out).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from splatkern.data import ImageSet
from splatkern.metrics import reconstruction_metrics
from splatkern.models import Autoencoder
from splatkern.models.markers import Commands, sigma_pixels

SCALINGS = ("none", "standard", "whiten")
REPORT_MD = "evaluation.md"
REPORT_JSON = "evaluation.json"


def cluster_errors(labels: np.ndarray, clusters: np.ndarray) -> int:
    """Samples outside their cluster's majority class, summed over clusters."""
    errors = 0
    for cluster in np.unique(clusters):
        members = labels[clusters == cluster]
        errors += len(members) - np.bincount(members).max()
    return int(errors)


def kmeans_accuracy(features: np.ndarray, labels: np.ndarray, k: int = 10, seed: int = 0,
                    scaling: str = "none") -> dict[str, float]:
    """The article's clustering score of ``features`` ``[N, F]``: ``errors`` and ``accuracy``.

    ``scaling``: ``"standard"`` gives each feature zero mean and unit variance first, ``"whiten"``
    also decorrelates them (PCA keeping 99% of the variance)."""
    from sklearn.cluster import KMeans  # noqa: PLC0415 - scikit-learn is an optional dependency
    from sklearn.decomposition import PCA  # noqa: PLC0415
    from sklearn.preprocessing import StandardScaler  # noqa: PLC0415

    if scaling not in SCALINGS:
        raise ValueError(f"unknown feature scaling {scaling!r}; choose one of {SCALINGS}")
    with _one_blas_thread():
        if scaling != "none":
            whiten = PCA(n_components=0.99, whiten=True, random_state=seed)
            features = (StandardScaler() if scaling == "standard" else whiten).fit_transform(features)
        clusters = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(features)
    errors = cluster_errors(labels, clusters)
    return {"errors": errors, "accuracy": 1.0 - errors / len(labels)}


def probe_accuracy(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
                   test_labels: np.ndarray) -> float:
    """Test accuracy of a logistic regression fitted on the (standardised) training features."""
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
    from sklearn.pipeline import make_pipeline  # noqa: PLC0415
    from sklearn.preprocessing import StandardScaler  # noqa: PLC0415

    with _one_blas_thread():
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        return float(probe.fit(train_features, train_labels).score(test_features, test_labels))


def _one_blas_thread():
    """These fits are small: OpenBLAS's threads only spin against each other, and on a busy 2-core
    machine they made a logistic regression on 1437 digits take 11 s instead of 0.3 s."""
    from threadpoolctl import threadpool_limits  # noqa: PLC0415 - installed with scikit-learn

    return threadpool_limits(limits=1, user_api="blas")


def shape_features(commands: Commands) -> torch.Tensor:
    """``[B, 4 P]``: the drawing without its place and size. The P markers' positions minus their
    mean, divided by their RMS distance from it (``2 P``); their widths (sigma) divided by that same
    distance (``P``); their intensities (``P``). Moving every marker by one offset, or scaling the
    positions and widths by one factor, leaves them unchanged."""
    positions = commands.positions.double()
    centred = positions - positions.mean(dim=1, keepdim=True)
    radius = centred.square().sum(dim=2).mean(dim=1).sqrt().clamp_min(1e-12)[:, None]  # [B, 1]
    widths = sigma_pixels(commands.sizes.double(), 1)
    return torch.cat([(centred / radius[..., None]).flatten(1), widths / radius, commands.intensities.double()], 1)


# The feature spaces drawn from a model's commands: its own features, and their shape.
COMMAND_SPACES = {"commands": lambda commands: commands.features, "shape": shape_features}


@torch.no_grad()
def command_features(model: Autoencoder, images: torch.Tensor, batch_size: int = 500) -> dict[str, np.ndarray]:
    """The model's features ``[N, F]`` in each of COMMAND_SPACES, from one pass of the encoder:
    ``"commands"``, its own (velocities + intensities for the gesture model, positions + sizes for the
    static one), and ``"shape"`` (:func:`shape_features`)."""
    device = next(model.parameters()).device
    parts: dict[str, list[torch.Tensor]] = {space: [] for space in COMMAND_SPACES}
    for start in range(0, len(images), batch_size):
        commands = model.commands(images[start : start + batch_size].to(device))
        for space, features in COMMAND_SPACES.items():
            parts[space].append(features(commands).cpu())
    return {space: torch.cat(chunks).double().numpy() for space, chunks in parts.items()}


def feature_spaces(model: Autoencoder, images: torch.Tensor) -> dict[str, np.ndarray]:
    """``images`` in every feature space that is scored: ``"pixels"``, then each of COMMAND_SPACES."""
    return {"pixels": images.flatten(1).double().numpy(), **command_features(model, images)}


def evaluate(model: Autoencoder, train_set: ImageSet, test_set: ImageSet, *, k: int = 10, seed: int = 0,
             scaling: str = "none", probe_train_limit: int | None = 10000) -> dict:
    """Reconstruction metrics on the test set, and k-means and linear-probe scores on pixels, on the
    commands and on their shape."""
    probe_train = ImageSet(*(t[:probe_train_limit] for t in train_set))
    train_spaces, test_spaces = feature_spaces(model, probe_train.images), feature_spaces(model, test_set.images)
    spaces = {space: (train_spaces[space], test_spaces[space]) for space in test_spaces}
    train_labels, test_labels = probe_train.labels.numpy(), test_set.labels.numpy()
    table = {
        name: {
            "dims": test_features.shape[1],
            "kmeans": kmeans_accuracy(test_features, test_labels, k, seed, scaling),
            "probe_accuracy": probe_accuracy(train_features, train_labels, test_features, test_labels),
        }
        for name, (train_features, test_features) in spaces.items()
    }
    return {
        "settings": {"k": k, "seed": seed, "scaling": scaling, "test_images": len(test_labels),
                     "probe_train_images": len(train_labels)},
        "reconstruction": reconstruction_metrics(model, test_set.images),
        "features": table,
    }


def markdown(report: dict) -> str:
    """The report as Markdown: reconstruction metrics, then the table of feature spaces."""
    rec, settings = report["reconstruction"], report["settings"]
    lines = [
        f"Test reconstruction: pixel accuracy {rec['accuracy']:.4f} (all-black image: {rec['black_accuracy']:.4f}), "
        f"MSE {rec['mse']:.4f} (all-black: {rec['black_mse']:.4f}), PSNR {rec['psnr']:.2f} dB",
        "",
        f"k-means with k = {settings['k']} (seed {settings['seed']}) on {settings['test_images']} test images; "
        f"linear probe fitted on {settings['probe_train_images']} training images; "
        f"k-means feature scaling: {settings['scaling']}",
        "",
        "| features | dims | k-means accuracy | k-means errors | linear probe accuracy |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in report["features"].items():
        lines.append(f"| {name} | {row['dims']} | {row['kmeans']['accuracy']:.2%} | {row['kmeans']['errors']} "
                     f"| {row['probe_accuracy']:.2%} |")
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Writes ``evaluation.md`` and ``evaluation.json`` into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / REPORT_MD, out / REPORT_JSON
    md.write_text(markdown(report))
    js.write_text(json.dumps(report, indent=1))
    return md, js
