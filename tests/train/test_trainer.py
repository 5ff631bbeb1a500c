"""End-to-end training on tiny digits: metrics written, exact resume, bad input."""

import json
import subprocess
import sys

import pytest
import torch

from fairdml import data
from fairdml.config import load_config
from fairdml.train import checkpoint
from fairdml.train.final import final_test
from fairdml.train.trainer import LAST, RunDirectoryError, Trainer

TINY = ["train.iterations_per_epoch=3", "data.num_folds=2", "data.val_fold=0",
        "data.classes_per_batch=2", "data.samples_per_class=4", "model.embedding_dim=16",
        "train.progress=false"]


@pytest.fixture(scope="module")
def digits_train():
    return data.load("digits").with_split("train")


def tiny_config(*overrides):
    return load_config("demo", [*TINY, *overrides])


def test_trains_validates_and_writes_metrics(tmp_path, digits_train):
    config = tiny_config("train.epochs=2", "train.tensorboard=true")
    summary = Trainer(config, digits_train, tmp_path / "run").fit()
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs_trained"] == 2
    assert 0.0 <= metrics["best_validation"]["map@r"] <= 1.0
    assert summary["best_epoch"] in (1, 2)
    assert (run / "checkpoints" / "best.pt").is_file()
    assert (run / "config.yaml").is_file()
    assert any((run / "tensorboard").iterdir())
    test = final_test(run)
    assert set(test) >= {"recall@1", "map@r", "r_precision", "nmi", "num_queries"}
    assert json.loads((run / "metrics.json").read_text())["test"] == test


def test_validation_never_shares_a_class_with_training(tmp_path, digits_train):
    trainer = Trainer(tiny_config("train.epochs=1"), digits_train, tmp_path / "run")
    fit = set(trainer.fit_table.labels.tolist())
    val = set(trainer.val_table.labels.tolist())
    assert fit and val and not fit & val
    assert fit | val == set(digits_train.labels.tolist())


def test_trainer_refuses_the_test_split(tmp_path):
    table = data.load("digits")
    with pytest.raises(ValueError, match="test split is sealed"):
        Trainer(tiny_config(), table, tmp_path / "run")


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, digits_train):
    uninterrupted = Trainer(tiny_config("train.epochs=2"), digits_train, tmp_path / "a")
    uninterrupted.fit()
    first = Trainer(tiny_config("train.epochs=1"), digits_train, tmp_path / "b")
    first.fit()
    resumed = Trainer(tiny_config("train.epochs=2"), digits_train, tmp_path / "b", resume=True)
    assert resumed.epoch == 1
    resumed.fit()
    expected = uninterrupted.model.state_dict()
    for name, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0, msg=name)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in uninterrupted.history]


def test_existing_run_is_never_overwritten(tmp_path, digits_train):
    Trainer(tiny_config("train.epochs=1"), digits_train, tmp_path / "run").fit()
    before = (tmp_path / "run" / "metrics.json").read_bytes()
    with pytest.raises(RunDirectoryError, match="already holds a run"):
        Trainer(tiny_config("train.epochs=1"), digits_train, tmp_path / "run")
    assert (tmp_path / "run" / "metrics.json").read_bytes() == before


def test_resume_with_another_config_is_refused(tmp_path, digits_train):
    Trainer(tiny_config("train.epochs=1"), digits_train, tmp_path / "run").fit()
    with pytest.raises(checkpoint.CheckpointError, match="optim.lr"):
        Trainer(tiny_config("train.epochs=2", "optim.lr=0.5"), digits_train, tmp_path / "run",
                resume=True)
    assert (tmp_path / "run" / LAST).is_file()


def test_cli_train_and_eval(tmp_path):
    run = tmp_path / "cli-run"
    command = [sys.executable, "-m", "fairdml.cli", "train", "demo", *TINY, "train.epochs=1",
               "--out", str(run)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "test metrics" in done.stdout
    assert "test" in json.loads((run / "metrics.json").read_text())
    evaluated = subprocess.run([sys.executable, "-m", "fairdml.cli", "eval", str(run)],
                               capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr


@pytest.mark.parametrize("arguments, message", [
    (["no_such_preset"], "preset 'no_such_preset' not found"),
    (["demo", "train.epoch=1"], "unknown config key 'train.epoch'"),
    (["demo", "data.batch_size=30"], "not divisible"),
    (["demo", "loss.name=no_such_loss"], "unknown loss 'no_such_loss'"),
])
def test_cli_bad_input_is_a_clear_error(tmp_path, arguments, message):
    done = subprocess.run([sys.executable, "-m", "fairdml.cli", "train", *arguments,
                           "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert message in done.stderr


def test_standard_transform_follows_the_trunk_convention():
    """BN-Inception expects BGR in 0-255 minus its mean: a pure red pixel becomes (-104, -117,
    127); a ResNet gets ImageNet mean/std normalisation of RGB in [0, 1]."""
    import numpy as np
    from PIL import Image

    from fairdml.train.trainer import build_model, build_transforms

    red = Image.fromarray(np.full((300, 400, 3), [255, 0, 0], dtype=np.uint8))
    config = load_config(None, ["model.trunk=bninception", "model.pretrained=false",
                                "data.transform=standard"])
    pixel = build_transforms(config, build_model(config), train=False)(red)[:, 100, 100]
    torch.testing.assert_close(pixel, torch.tensor([-104.0, -117.0, 127.0]))
    config = load_config(None, ["model.trunk=resnet18", "model.pretrained=false",
                                "data.transform=standard"])
    image = build_transforms(config, build_model(config), train=False)(red)
    assert image.shape == (3, 224, 224)  # the trunk's declared crop when the config sets none
    torch.testing.assert_close(image[:, 100, 100],
                               torch.tensor([(1 - 0.485) / 0.229, -0.456 / 0.224,
                                             -0.406 / 0.225]))


def test_cli_names_a_corrupt_image_and_keeps_nothing_half_written(tmp_path):
    import numpy as np
    from PIL import Image

    root = tmp_path / "images"
    for c in range(8):
        for i in range(4):
            path = root / f"class{c}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((28, 28), 40 * i + c, dtype=np.uint8)).save(path)
    corrupt = root / "class1" / "2.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    done = subprocess.run(
        [sys.executable, "-m", "fairdml.cli", "train", "demo", "data.name=folder",
         f"data.root={root}", "data.transform=omniglot", "data.val_fold=null",
         "data.classes_per_batch=2", "data.samples_per_class=4", "train.epochs=1",
         "train.progress=false", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert str(corrupt) in done.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()
