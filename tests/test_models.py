from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from imgtrain.config import BACKBONES, MODELS, ModelConfig
from imgtrain.errors import UserError
from imgtrain.models import build_model
from imgtrain.models.backbones import BASE_NAME, TABLE


@pytest.fixture(scope="module")
def every_model() -> dict:
    """Each model of the table built once, without pretrained weights, for 3 classes at 32x32:
    the backbones are the slow part of this file, so its tests share them."""
    built = {}
    for name in MODELS:
        cfg = ModelConfig(name=name)
        if name in BACKBONES:
            cfg.transfer().weights = "none"
        built[name] = build_model(cfg, 3, [32, 32])
    return built


def test_cnn_shape_and_options():
    cfg = ModelConfig(name="cnn")
    cfg.cnn.filters = [4, 8, 16]
    cfg.cnn.convs_per_block = 2
    built = build_model(cfg, 5, [32, 32])
    out = built.model(np.zeros((2, 32, 32, 3), np.float32))
    assert out.shape == (2, 5)
    names = [layer.name for layer in built.model.layers]
    assert sum(n.startswith("block") and "_conv" in n for n in names) == 6
    assert sum("_bn" in n for n in names) == 6
    cfg.cnn.batch_norm = False
    names = [layer.name for layer in build_model(cfg, 5, [32, 32]).model.layers]
    assert not any("_bn" in n for n in names)


def test_dnn_has_estimator_options():
    cfg = ModelConfig(name="dnn")
    cfg.dnn.hidden_units = [16, 8, 4]
    cfg.dnn.activation = "tanh"
    cfg.dnn.dropout = 0.5
    cfg.dnn.batch_norm = True
    model = build_model(cfg, 3, [8, 8]).model
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert [d.units for d in dense] == [16, 8, 4, 3]
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers) == 3
    assert sum(isinstance(layer, keras.layers.Dropout) for layer in model.layers) == 3
    assert all(
        layer.activation.__name__ == "tanh" for layer in model.layers if isinstance(layer, keras.layers.Activation)
    )
    # Dropout is active in training only.
    x = np.random.rand(4, 8, 8, 3).astype(np.float32) * 255
    np.testing.assert_allclose(model(x, training=False), model(x, training=False))


def test_dnn_unknown_activation():
    cfg = ModelConfig(name="dnn")
    cfg.dnn.activation = "sparkle"
    with pytest.raises(UserError, match="unknown model.dnn.activation 'sparkle'"):
        build_model(cfg, 3, [8, 8])


def test_resnet_phases_freeze_then_fine_tune(tmp_path: Path):
    # A local weights file (written from an untrained base) exercises the file path offline.
    base = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg")
    weights = tmp_path / "base.weights.h5"
    base.save_weights(weights)
    cfg = ModelConfig(name="resnet50")
    cfg.resnet50.weights = str(weights)
    cfg.resnet50.freeze_epochs = 2
    cfg.resnet50.fine_tune_layers = 10
    cfg.resnet50.fine_tune_lr_factor = 0.1
    built = build_model(cfg, 4, [32, 32])
    model = built.model
    np.testing.assert_allclose(model.get_layer(BASE_NAME).get_weights()[0], base.get_weights()[0])
    assert [p.start_epoch for p in built.phases] == [0, 2]
    assert len(model.trainable_variables) == 2  # only the head
    built.phase_at(2).apply(model)
    b = model.get_layer(BASE_NAME)
    trainable_layers = [layer for layer in b.layers if layer.trainable and layer.weights]
    assert 0 < len(trainable_layers) <= 10
    assert all(b.layers.index(layer) >= len(b.layers) - 10 for layer in trainable_layers)
    assert built.phase_at(3).lr_factor == 0.1
    fine_tune_count = len(model.trainable_variables)
    everything = built.all_trainable_variables()  # union over phases, then back to phase 0
    assert len(everything) == fine_tune_count
    assert len(model.trainable_variables) == 2
    # The base runs in inference mode: BatchNorm statistics do not move in training calls.
    bn = [layer for layer in b.layers if isinstance(layer, keras.layers.BatchNormalization)][-1]
    before = bn.moving_mean.numpy().copy()
    model(np.random.rand(2, 32, 32, 3).astype(np.float32) * 255, training=True)
    np.testing.assert_array_equal(before, bn.moving_mean.numpy())


def test_resnet_weights_file_missing(tmp_path: Path):
    cfg = ModelConfig(name="resnet50")
    cfg.resnet50.weights = str(tmp_path / "missing.h5")
    with pytest.raises(UserError, match="weights file .*missing.h5 does not exist"):
        build_model(cfg, 3, [32, 32])


def test_resnet_without_weights_trains_everything(every_model):
    built = every_model["resnet50"]
    assert len(built.phases) == 1
    assert len(built.model.trainable_variables) > 100


@pytest.mark.parametrize("name", MODELS)
def test_every_model_builds_and_trains_a_step(name: str, every_model):
    model = every_model[name].model
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    y = np.array([0, 1, 2, 0])
    opt = keras.optimizers.Adam(1e-3)
    before = [v.numpy().copy() for v in model.trainable_variables]
    with tf.GradientTape() as tape:
        loss = keras.losses.sparse_categorical_crossentropy(y, model(x, training=True), from_logits=True)
    grads = tape.gradient(loss, model.trainable_variables)
    opt.apply(grads, model.trainable_variables)
    assert np.isfinite(loss.numpy()).all()
    assert any(not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables))

    # No custom layer anywhere: only Keras' own classes (what a plain Keras process can load).
    def classes(m):
        for layer in m.layers:
            yield type(layer).__module__
            if isinstance(layer, keras.Model):
                yield from classes(layer)

    assert all(mod.startswith("keras.") for mod in classes(model)), set(classes(model))


def test_backbone_table_matches_config():
    assert set(TABLE) == set(BACKBONES)


def test_resnet_preprocessing_matches_keras(every_model):
    model = every_model["resnet50"].model
    x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    prep = keras.Model(model.input, model.get_layer("caffe_mean").output)
    np.testing.assert_allclose(prep(x), keras.applications.resnet50.preprocess_input(x.copy()), atol=1e-4)


@pytest.mark.slow
def test_every_model_keras_file_loads_in_plain_keras(tmp_path: Path, every_model):
    """model.keras of every model type loads in a process that never imports imgtrain."""
    import json
    import subprocess
    import sys

    from imgtrain.export import export_keras

    x = np.random.default_rng(2).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    expected = {}
    for name in MODELS:
        model = every_model[name].model
        (tmp_path / name).mkdir()
        export_keras(model, tmp_path / name)
        expected[name] = model(x, training=False).numpy().tolist()
    (tmp_path / "expected.json").write_text(json.dumps(expected))
    script = f"""
import json, sys, numpy as np, keras
root = {str(tmp_path)!r}
x = np.load(root + "/x.npy")
expected = json.load(open(root + "/expected.json"))
for name, want in expected.items():
    model = keras.saving.load_model(root + "/" + name + "/model.keras")
    np.testing.assert_allclose(model(x, training=False), np.array(want), rtol=1e-4, atol=1e-4)
assert not any(m.startswith("imgtrain") for m in sys.modules), "imgtrain was imported"
print("loaded", len(expected))
"""
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"loaded {len(MODELS)}" in proc.stdout
