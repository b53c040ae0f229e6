"""Who resamples the training images: OpenCV or TensorFlow, decided once per run.

``data.augment.resampler`` is ``auto``, ``opencv`` or ``tensorflow``; a run makes it
concrete once (``decide``): the chief's choice is every worker's, and it is written into the
run's config.yaml, so a resume uses the same kernel. The two kernels make pixels a level
apart, so a worker or a resume on another kernel would break the promise that a resumed run
ends with the uninterrupted run's weights: such a run is refused in one line instead (a
worker without OpenCV; a resume told another kernel, through the run directory's config
check). Outside a run (the benchmark, tests) ``used`` resolves ``auto`` locally.

A tf.data service always resamples with TensorFlow: its workers run the pipeline's graph,
where no Python function can go, and its local fallback must make the same pixels.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

from imgtrain.config import DataConfig
from imgtrain.data import geometry
from imgtrain.errors import UserError

KERNELS = ("tensorflow", "opencv")  # what a decision is; their index crosses between workers
INSTALL = "pip install opencv-python-headless"


def available() -> bool:
    return geometry._cv2() is not None


def _moves_pixels(cfg: DataConfig) -> bool:
    acfg = geometry.on_host(cfg.augment) if cfg.augment.on_device else cfg.augment
    return geometry.is_geometric(acfg)


def _local(cfg: DataConfig, saved: Optional[str]) -> str:
    """This process's answer: the service's kernel, the config's, the resumed run's, or auto's."""
    if cfg.service:
        return "tensorflow"
    if cfg.augment.resampler != "auto":
        return cfg.augment.resampler
    if saved in KERNELS:
        return saved
    return "opencv" if available() else "tensorflow"


def decide(
    cfg: DataConfig, saved: Optional[str], gather: Callable[[float], list[float]]
) -> tuple[DataConfig, list[str]]:
    """``cfg`` with its resampler made concrete, the chief's choice on every worker, and the
    warnings to print. ``saved`` is the resumed run's recorded resampler (None for a new run);
    ``gather`` is the distribution's (every worker's value, in rank order). Every worker
    refuses together when the choice is OpenCV, the augmentation needs it, and a worker lacks it."""
    chosen = KERNELS[int(gather(float(KERNELS.index(_local(cfg, saved))))[0])]
    have = gather(1.0 if available() else 0.0)
    if chosen == "opencv" and _moves_pixels(cfg) and min(have) < 1.0:
        lacking = [str(rank) for rank, h in enumerate(have) if h < 1.0]
        where = "here" if len(have) == 1 else f"on worker(s) {', '.join(lacking)}"
        why = "this run resamples with OpenCV" + (" (its config.yaml)" if saved == "opencv" else "")
        raise UserError(
            f"{why}, but OpenCV is not installed {where}; {INSTALL}"
            + ("" if saved == "opencv" else ", or set data.augment.resampler=tensorflow")
        )
    warnings = []
    if cfg.augment.resampler == "auto" and saved is None and chosen == "tensorflow" and not cfg.service:
        if _moves_pixels(cfg):
            warnings.append(
                f"OpenCV is not installed, so TensorFlow resamples the augmentation, several times slower; {INSTALL}"
            )
    augment = dataclasses.replace(cfg.augment, resampler=chosen)
    return dataclasses.replace(cfg, augment=augment), warnings


def used(cfg: DataConfig) -> str:
    """Who resamples the training images in tf.data ("" when no augmentation there moves
    pixels). ``auto`` (outside a run) is resolved on this machine."""
    if not _moves_pixels(cfg):
        return ""
    choice = _local(cfg, None)
    if choice == "opencv" and not available():
        raise UserError(
            f"data.augment.resampler is opencv but OpenCV is not installed; {INSTALL}, "
            "or set data.augment.resampler=tensorflow"
        )
    return choice
