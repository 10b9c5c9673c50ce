"""The article's velocity-gesture model on MNIST: 25 steps of at most 3 px, 50 epochs, batch 16, and
k-means (k = 10) on the test set's pixels vs the learned velocities + intensities."""

from experiment import run

from splatkern.models import ARTICLE_GESTURE

ARTICLE = {"train_accuracy": 0.991, "train_mse": 0.0153, "test_accuracy": 0.9886, "test_mse": 0.0169,
           "kmeans_pixels": "58.87% (4113 errors)", "kmeans_commands": "81.17% (1883 errors)"}

if __name__ == "__main__":
    raise SystemExit(run("mnist-gesture", ARTICLE_GESTURE, "mnist", epochs=50, article=ARTICLE))
