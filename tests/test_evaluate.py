import json

import numpy as np
import pytest
import torch

from splatkern import data, evaluate
from splatkern.models import ModelConfig, build_model
from splatkern.models.markers import VAR_FLOOR, VARCOEF, Commands, sigma_pixels

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_cluster_errors_count_the_samples_outside_each_majority():
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2])
    clusters = np.array([5, 5, 5, 7, 7, 7, 9, 9, 9])
    # cluster 5 holds 0,0,1 (1 error); cluster 7 holds 1,1,2 (1 error); cluster 9 holds 2,2,2 (none)
    assert evaluate.cluster_errors(labels, clusters) == 2


def _blobs(per_class=30, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.eye(classes) * 10
    features = np.concatenate([centre + rng.normal(scale=0.5, size=(per_class, classes)) for centre in centres])
    return features, np.repeat(np.arange(classes), per_class)


def test_kmeans_separates_separated_blobs_and_one_cluster_keeps_one_class():
    features, labels = _blobs()
    assert evaluate.kmeans_accuracy(features, labels, k=3) == {"errors": 0, "accuracy": 1.0}
    one = evaluate.kmeans_accuracy(features, labels, k=1)
    assert one["errors"] == 60 and one["accuracy"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("scaling", evaluate.SCALINGS)
def test_kmeans_scalings_keep_separated_blobs_separated(scaling):
    features, labels = _blobs()
    features[:, 0] *= 1000  # a feature on another scale
    assert evaluate.kmeans_accuracy(features, labels, k=3, scaling=scaling)["accuracy"] > 0.6
    with pytest.raises(ValueError, match="unknown feature scaling"):
        evaluate.kmeans_accuracy(features, labels, scaling="minmax")


def test_standardising_rescues_kmeans_from_one_loud_noise_feature():
    features, labels = _blobs(seed=1)
    noise = np.random.default_rng(2).normal(scale=1000, size=(len(labels), 1))
    loud = np.concatenate([features, noise], axis=1)
    assert evaluate.kmeans_accuracy(loud, labels, k=3)["accuracy"] < 0.8
    assert evaluate.kmeans_accuracy(loud, labels, k=3, scaling="standard")["accuracy"] == 1.0


def test_linear_probe_reads_separable_classes():
    features, labels = _blobs()
    test_features, test_labels = _blobs(seed=3)
    assert evaluate.probe_accuracy(features, labels, test_features, test_labels) == 1.0


def test_shape_features_ignore_where_the_drawing_sits_and_its_size():
    torch.manual_seed(0)
    positions, sizes = torch.rand(3, 5, 2), torch.rand(3, 5)
    commands = Commands(positions, sizes, torch.rand(3, 5), features=torch.zeros(3, 1))
    shape = evaluate.shape_features(commands)
    assert shape.shape == (3, 20)
    # moved by an offset per image, and twice as large: positions and widths (sigma) both double
    widths = sigma_pixels(sizes.double(), 1) * 2
    larger_sizes = ((2 * widths.square() - VAR_FLOOR) / VARCOEF).float()
    moved = Commands(2 * positions + torch.tensor([[[0.3, -0.2]]]), larger_sizes, commands.intensities,
                     features=torch.zeros(3, 1))
    torch.testing.assert_close(evaluate.shape_features(moved), shape, rtol=1e-5, atol=1e-6)
    centred = shape[:, :10].reshape(3, 5, 2)
    torch.testing.assert_close(centred.mean(1), torch.zeros(3, 2, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(centred.square().sum(2).mean(1), torch.ones(3, dtype=torch.float64))
    assert not torch.allclose(evaluate.shape_features(Commands(positions.flip(1), sizes, commands.intensities,
                                                               features=torch.zeros(3, 1))), shape)


def test_report_has_every_feature_space_and_writes_markdown_and_json(tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig(model="static"))
    train_set, test_set = data.load("digits", "train", limit=100), data.load("digits", "test", limit=60)
    report = evaluate.evaluate(model, train_set, test_set, k=4, probe_train_limit=80)
    assert report["settings"] == {"k": 4, "seed": 0, "scaling": "none", "test_images": 60, "probe_train_images": 80}
    assert report["features"]["pixels"]["dims"] == 784 and report["features"]["commands"]["dims"] == 30
    assert report["features"]["shape"]["dims"] == 40  # 10 markers: 2 + 1 + 1 numbers each
    for row in report["features"].values():
        assert 0 <= row["kmeans"]["errors"] <= 60 and 0 <= row["probe_accuracy"] <= 1
    rec = report["reconstruction"]
    assert rec["black_accuracy"] == pytest.approx(float((test_set.images < 0.5).double().mean()))
    md, js = evaluate.write_report(report, tmp_path)
    assert "| pixels | 784 |" in md.read_text() and "| commands | 30 |" in md.read_text()
    assert json.loads(js.read_text())["features"]["commands"]["kmeans"] == report["features"]["commands"]["kmeans"]
