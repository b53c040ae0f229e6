"""A run's model as an MLflow model: the one packaging that ``export --format mlflow``
writes to a folder and that tracking logs to the run's MLflow run.

The package is ``model.keras`` with a softmax on top, in MLflow's Keras flavor, with a
tensor signature (float32 pixels ``[n, h, w, 3]``, RGB 0-255 at the training size, in;
``probabilities`` out, index i is ``class_names[i]``), the class names in its metadata, and
pinned Keras and TensorFlow requirements, so ``mlflow.pyfunc.load_model`` predicts with it
and ``mlflow models serve`` builds its environment. MLflow itself is imported only inside
these functions (``imgtrain[mlflow]``) and by ``tracking.sender``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import keras
import numpy as np

from imgtrain.errors import UserError
from imgtrain.export.keras_file import probability_model

NAME = "model"  # the logged model's name: runs:/RUN_ID/model
READER = "mlflow.pyfunc.load_model"


def require(what: str, fix: str) -> None:
    """Refuse in one line when MLflow is not installed: ``what`` needs it, ``fix`` is the other way out."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise UserError(
            f"{what} needs MLflow, which is not installed; pip install 'imgtrain[mlflow]', or {fix}"
        ) from None


def _package(model: keras.Model, names: Sequence[str], image_size: Sequence[int]) -> dict[str, Any]:
    """What ``mlflow.keras.save_model`` is given besides the path: the probability model, its
    signature, the exact requirements and the class names."""
    import tensorflow as tf
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    h, w = int(image_size[0]), int(image_size[1])
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, h, w, 3), "image")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(names)), "probabilities")]),
    )
    return {
        "model": probability_model(model),
        "signature": signature,
        "pip_requirements": [f"keras=={keras.__version__}", f"tensorflow=={tf.__version__.split('+')[0]}"],
        "metadata": {"class_names": list(names)},
    }


def save(model: keras.Model, names: Sequence[str], image_size: Sequence[int], folder: Path) -> Path:
    """The MLflow model directory at ``folder`` (MLmodel, the Keras file, the requirements),
    written whole beside it and swapped in: a failure leaves an earlier export as it was."""
    from imgtrain import atomic

    require("export --format mlflow", "choose another --format")
    import mlflow.keras

    with atomic.replacing_dir(Path(folder)) as tmp:
        mlflow.keras.save_model(path=str(tmp), **_package(model, names, image_size))
    return Path(folder)


def read(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """MLflow's own reader of the package: float pixels in, probabilities out."""
    import mlflow.pyfunc

    loaded = mlflow.pyfunc.load_model(str(path))

    def predict(x: np.ndarray) -> np.ndarray:
        # The flavor's predict draws Keras' progress bar on stdout, between imgtrain's lines.
        interactive = keras.config.is_interactive_logging_enabled()
        keras.config.disable_interactive_logging()
        try:
            return np.asarray(loaded.predict(np.asarray(x, np.float32)))
        finally:
            if interactive:
                keras.config.enable_interactive_logging()

    return predict


def log(
    client: Any, experiment_id: str, run_id: str, model: keras.Model, names: Sequence[str], image_size: Sequence[int]
) -> str:
    """Log the package to MLflow run ``run_id`` as its logged model ``NAME``; return its
    ``models:/`` URI. Through ``client`` only: MLflow's global URI and experiment are left as
    they are (``Model.log`` reads and needs both)."""
    import mlflow.keras
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model

    logged = client.create_logged_model(experiment_id, name=NAME, source_run_id=run_id)
    try:
        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
        card = Model(
            artifact_path=logged.artifact_location, run_id=run_id, model_uuid=logged.model_id, model_id=logged.model_id
        )
        with tempfile.TemporaryDirectory(prefix="imgtrain-mlflow-") as tmp:
            local = Path(tmp) / NAME
            mlflow.keras.save_model(path=str(local), mlflow_model=card, **_package(model, names, image_size))
            client.log_model_artifacts(logged.model_id, str(local))
    except BaseException:
        try:
            client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        except Exception:  # noqa: BLE001 - the first failure is the one to report
            pass
        raise
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    return f"models:/{logged.model_id}"
