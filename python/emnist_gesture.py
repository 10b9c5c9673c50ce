"""The article's gesture model on EMNIST letters (a 60K / 10K subset, the same model as for MNIST).

EMNIST is not bundled: put torchvision's EMNIST files in --data-dir (the script names them if missing).
The article gives no clustering figure for EMNIST; k = 26, one cluster per letter, is this script's choice."""

from experiment import run

from splatkern.models import ARTICLE_GESTURE

ARTICLE = {"test_accuracy": 0.980, "test_mse": 0.0234}

if __name__ == "__main__":
    raise SystemExit(run("emnist-gesture", ARTICLE_GESTURE, "emnist-letters",
                         epochs=50, article=ARTICLE, k=26, train_limit=60000, test_limit=10000))
