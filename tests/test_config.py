import re
from pathlib import Path

import pytest

from imgtrain.config import Config
from imgtrain.config_parse import apply_override
from imgtrain.errors import UserError


def test_defaults_are_valid():
    cfg = Config.load()
    assert cfg.model.name == "cnn"
    assert cfg.data.image_size == [224, 224]


def test_yaml_then_overrides(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 3\ntrain:\n  epochs: 4\n  optimizer: {name: sgd, nesterov: true}\ndata:\n  image_size: 64\n")
    cfg = Config.load(path, ["train.epochs=9", "model.dnn.hidden_units=[8, 4]", "train.class_weights={a: 2.0}"])
    assert cfg.seed == 3
    assert cfg.train.epochs == 9  # --set wins over the file
    assert cfg.train.optimizer.name == "sgd" and cfg.train.optimizer.nesterov is True
    assert cfg.data.image_size == [64, 64]  # one number means a square
    assert cfg.model.dnn.hidden_units == [8, 4]
    assert cfg.train.class_weights == {"a": 2.0}


def test_round_trip(tmp_path: Path):
    cfg = Config.load(None, ["train.epochs=2", "data.label_vocabulary=[cat, dog]"])
    cfg.save(tmp_path / "config.yaml")
    again = Config.load(tmp_path / "config.yaml")
    assert again == cfg


@pytest.mark.parametrize(
    "item, fragment",
    [
        ("train.optimzer.name=adam", "did you mean 'train.optimizer'"),
        ("train.epochz=3", "did you mean 'train.epochs'"),
        ("nosuchsection.x=1", "unknown config key 'nosuchsection'"),
        ("train.epochs=three", "must be an integer"),
        ("train.epochs", "must look like section.key=value"),
        ("model.name=vgg", "unknown model.name 'vgg'"),
        ("train.optimizer.name=adamax", "unknown train.optimizer.name 'adamax'"),
        ("data.split.train=0.5", "sum to 1"),
        ("train.class_weights=inverse", "train.class_weights must be 'balanced'"),
        ("deterministic=true train.jit_compile=true", "cannot be combined"),
    ],
)
def test_bad_values_are_one_line_user_errors(item, fragment):
    with pytest.raises(UserError) as info:
        Config.load(None, item.split(" "))
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_key_in_file_names_the_file(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  batchsize: 3\n")
    with pytest.raises(
        UserError, match=r"unknown config key 'train.batchsize' in .*bad.yaml; did you mean 'train.batch_size'"
    ):
        Config.load(path)


def test_malformed_yaml_says_where(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: [1, 2\n")
    with pytest.raises(UserError, match=r"not valid YAML at line \d+, column \d+"):
        Config.load(path)


def test_missing_config_file(tmp_path: Path):
    with pytest.raises(UserError, match="does not exist"):
        Config.load(tmp_path / "nope.yaml")


def test_resnet_needs_32_pixels():
    with pytest.raises(UserError, match="too small for resnet50"):
        Config.load(None, ["model.name=resnet50", "data.image_size=16"])


def test_override_keeps_other_values():
    cfg = Config.load(None, ["train.epochs=2"])
    cfg2 = apply_override(cfg, "train.optimizer.learning_rate=0.5")
    assert cfg2.train.epochs == 2 and cfg2.train.optimizer.learning_rate == 0.5


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml")), ids=lambda p: p.name
)
def test_shipped_configs_are_valid(path: Path):
    Config.load(path)


@pytest.mark.parametrize(
    "item, message",
    [
        ("data.augment.randaugment.num_ops=11", "randaugment.num_ops must be 0"),
        ("data.augment.randaugment.magnitude=.nan", "randaugment.magnitude must be in"),
        ("data.augment.random_erasing.probability=1.5", "random_erasing.probability must be in"),
        ("data.augment.random_erasing.fill=pink", "random_erasing.fill"),
        ("data.augment.mixup=-1", "data.augment.mixup must be in"),
        ("data.augment.cutmix=.inf", "data.augment.cutmix must be in"),
        ("data.augment.resampler=pillow", "data.augment.resampler"),
        ("data.eval_crop_fraction=0", "data.eval_crop_fraction must be in (0"),
        ("train.ema.decay=1", "train.ema.decay must be in (0, 1)"),
        ("train.schedule.plateau_factor=1", "plateau_factor must be in"),
        ("train.schedule.warmup_epochs=99", "warmup_epochs must be in"),
        ("train.precise_bn.samples=0", "precise_bn.samples must be a positive"),
        ("data.augment.rotation=.nan", "data.augment.rotation must be in"),
        ("data.augment.zoom=1.5", "data.augment.zoom must be in"),
        ("data.augment.brightness=-0.1", "data.augment.brightness must be in"),
        ("model.cnn.bn_momentum=1", "model.cnn.bn_momentum must be in"),
        ("train.optimizer.weight_decay=.inf", "train.optimizer.weight_decay must be in"),
        ("train.optimizer.clipnorm=.nan", "train.optimizer.clipnorm must be a positive finite"),
        ("train.optimizer.momentum=-1", "train.optimizer.momentum must be in"),
        ("train.schedule.step_factor=0", "train.schedule.step_factor must be in"),
        ("train.early_stopping.min_delta=.nan", "train.early_stopping.min_delta must be in"),
        ("train.early_stopping.patience=-1", "patience must be 0 or more"),
        ("data.service_timeout=0", "data.service_timeout must be in (0, 86400]"),
        ("data.service_timeout=.nan", "data.service_timeout must be in"),
        ("data.split_seed=-1", "data.split_seed must be an integer from 0 to 2147483647"),
        ("seed=2147483648", "seed must be an integer from 0 to 2147483647"),
    ],
)
def test_recipe_numbers_are_checked(item: str, message: str):
    with pytest.raises(UserError, match=re.escape(message)):
        Config.load(None, [item])


def test_a_config_that_is_a_folder_says_so(tmp_path, capsys):
    from imgtrain.cli import main

    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "small.yaml").write_text("seed: 1\n")
    assert main(["train", "--config", str(tmp_path / "configs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is a folder (it holds small.yaml)" in err and "does not exist" not in err


@pytest.mark.parametrize(
    "items, message",
    [
        (["data.augment.on_device=true", "data.augment.randaugment.num_ops=2"], "set data.augment.on_device=false"),
        (["data.augment.on_device=true", "data.augment.random_erasing.probability=0.25"], "or turn them off"),
        (["data.augment.on_device=true", "data.service=grpc://host:5050"], "cannot be combined"),
    ],
)
def test_on_device_refuses_what_it_cannot_run(items, message, tmp_path, capsys):
    """on_device with RandAugment, random erasing or a tf.data service: one line, exit 2."""
    from imgtrain.cli import main

    args = ["train", "--data", str(tmp_path), "--output", str(tmp_path / "run")]
    for item in items:
        args += ["--set", item]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_every_path_field_is_resolved_from_the_one_table(tmp_path: Path):
    """A field that holds a local path (named *path, *dir, output, *weights, warm_start) is in
    config.PATH_KEYS, and each is made absolute against the working directory once: a
    backbone's weights file too, so a resume from another folder finds it."""
    import dataclasses

    from imgtrain.config import PATH_KEYS

    def fields(section, prefix=""):
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if dataclasses.is_dataclass(value):
                yield from fields(value, f"{prefix}{f.name}.")
            else:
                yield f"{prefix}{f.name}"

    looks_like_a_path = {
        key
        for key in fields(Config())
        if key.split(".")[-1].endswith(("path", "dir", "output", "weights", "warm_start"))
    }
    assert looks_like_a_path - {"train.class_weights"} == set(PATH_KEYS)
    items = [f"{key}=rel/{i}" for i, key in enumerate(PATH_KEYS)]
    cfg = Config.load(None, items).with_absolute_paths(tmp_path)
    for i, key in enumerate(PATH_KEYS):
        value = cfg.to_dict()
        for part in key.split("."):
            value = value[part]
        assert value == str(tmp_path / "rel" / str(i)), key
    kept = Config.load(None, ["model.resnet50.weights=imagenet", "data.path=tfds:mnist"]).with_absolute_paths(tmp_path)
    assert (kept.model.resnet50.weights, kept.data.path) == ("imagenet", "tfds:mnist")
