"""The article's static-points model on MNIST: 10 markers (x, y, size), amplitude 1, 10 epochs, batch 16."""

from experiment import run

from splatkern.models import ModelConfig

ARTICLE = {"train_accuracy": 0.973, "test_accuracy": 0.972, "test_mse": 0.0256}

if __name__ == "__main__":
    raise SystemExit(run("mnist-static", ModelConfig(model="static", points=10), "mnist", epochs=10, article=ARTICLE))
