import pytest

from fairdml.config import ConfigError, RunConfig, load_config, save_config


def test_defaults_and_overrides_are_typed():
    config = load_config(None, ["loss.name=triplet", "train.epochs=3", "optim.lr=1e-4",
                                "loss.params.margin=0.2", "model.embedding_dim=null",
                                "eval.recall_ks=[1, 10]"])
    assert isinstance(config, RunConfig)
    assert config.loss.name == "triplet"
    assert config.train.epochs == 3
    assert config.optim.lr == pytest.approx(1e-4)
    assert config.loss.params == {"margin": 0.2}
    assert config.model.embedding_dim is None
    assert config.eval.recall_ks == [1, 10]


@pytest.mark.parametrize("override, message", [
    ("train.epoch=3", "'train.epoch'"),
    ("train.epochs=abc", "'train.epochs': expected an integer"),
    ("optim.lr=fast", "'optim.lr': expected a number"),
    ("model.pretrained=3", "'model.pretrained'"),
    ("nonsense=1", "'nonsense'"),
    ("data.batch_size=30", "not divisible by data.samples_per_class 4"),
    ("train.epochs", "key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_config(None, [override])


def test_batch_size_sets_classes_per_batch():
    config = load_config(None, ["data.batch_size=32", "data.samples_per_class=4"])
    assert config.data.classes_per_batch == 8


def test_missing_preset_lists_available_ones():
    with pytest.raises(ConfigError, match="preset 'no_such_preset' not found; available presets:"
                                          ".*demo"):
        load_config("no_such_preset")


def test_preset_file_errors_name_the_file(tmp_path):
    preset = tmp_path / "bad.yaml"
    preset.write_text("train:\n  epochs: ten\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: config key 'train\.epochs'"):
        load_config(preset)


def test_saved_config_round_trips(tmp_path):
    config = load_config("demo", ["train.epochs=2"])
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config
