"""data.service: the training pipeline decoded and augmented by a real tf.data service on
localhost (launch/data_service.py), every example read once per epoch."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import write_folder

from imgtrain.config import AugmentConfig, DataConfig
from imgtrain.data.pipeline import EpochPlan, Shard, train_dataset
from imgtrain.data.sources import discover
from imgtrain.data.split import apply_split

pytestmark = pytest.mark.slow
LAUNCH = Path(__file__).resolve().parent.parent / "launch" / "data_service.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start(*args: str) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.Popen([sys.executable, str(LAUNCH), *args], stdout=subprocess.PIPE, text=True, env=env)


def wait_for(port: int, seconds: float = 60.0) -> None:
    end = time.time() + seconds
    while time.time() < end:
        with socket.socket() as s:
            if s.connect_ex(("localhost", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on {port}")


def stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


def images(ds) -> Counter:
    """The real (not padding) images of a dataset, as a multiset of their bytes."""
    seen: Counter = Counter()
    for x, _y, _w, real in ds:
        for image, r in zip(x.numpy(), real.numpy()):
            if r > 0:
                seen[np.round(image, 3).tobytes()] += 1
    return seen


def split_train(cfg: DataConfig):
    return apply_split(discover(cfg), cfg.split, 0).split("train")


def test_every_example_once_per_epoch_through_the_service(tmp_path):
    port = free_port()
    service = start("--port", str(port), "--workers", "2")
    try:
        wait_for(port)
        folder = write_folder(tmp_path / "img", per_class=10)
        augment = AugmentConfig(horizontal_flip=True, rotation=15.0, resampler="tensorflow")  # as the service does
        local_cfg = DataConfig(path=str(folder), image_size=[16, 16], augment=augment)
        cfg = DataConfig(path=str(folder), image_size=[16, 16], augment=augment, service=f"grpc://localhost:{port}")
        examples = split_train(local_cfg)
        for epoch in (0, 1):
            served, local, steps = Counter(), Counter(), set()
            for rank in range(2):
                plan = EpochPlan(seed=5, epoch=epoch, batch_size=4, shard=Shard(2, rank))
                batches = list(train_dataset(examples, cfg, plan))
                steps.add(len(batches))
                served += images(batches)
                local += images(train_dataset(examples, local_cfg, plan))
            assert len(steps) == 1  # every trainer takes the same number of steps
            assert sum(served.values()) == len(examples)
            assert served == local  # the same augmented pixels, each example exactly once
    finally:
        stop(service)


def epoch_through_a_dying_service(tmp_path, worker_timeout: str, service_timeout: float) -> tuple[int, int, bool]:
    """A dispatcher and two workers in their own processes; worker 0 is SIGKILLed once the
    trainer has its first batch. Returns (real images received, training examples,
    served == local pixels)."""
    port = free_port()
    dispatcher = start("--role", "dispatcher", "--port", str(port), "--worker-timeout", worker_timeout)
    workers = []
    try:
        wait_for(port)
        for _ in range(2):
            workers.append(start("--role", "worker", "--dispatcher", f"localhost:{port}", "--port", str(free_port())))
        folder = write_folder(tmp_path / "img", per_class=100, size=32)
        augment = AugmentConfig(horizontal_flip=True, rotation=15.0, resampler="tensorflow")  # as the service does
        local_cfg = DataConfig(path=str(folder), image_size=[32, 32], augment=augment)
        cfg = replace(local_cfg, service=f"grpc://localhost:{port}", service_timeout=service_timeout)
        examples = split_train(local_cfg)
        plan = EpochPlan(seed=3, epoch=0, batch_size=4)
        local = images(train_dataset(examples, local_cfg, plan))
        served: Counter = Counter()
        batches = 0
        for batch in train_dataset(examples, cfg, plan):
            if batches == 0:
                workers[0].kill()
            batches += 1
            served += images([batch])
        assert batches == -(-len(examples) // 4)
        return sum(served.values()), len(examples), served == local
    finally:
        stop(*workers, dispatcher)


@pytest.mark.timeout(300)
def test_a_worker_killed_mid_epoch_does_not_lose_the_epoch(tmp_path):
    """TensorFlow's client alone waits for a dead worker forever; the trainer gets every
    example once, with the local pipeline's pixels: from the service, or, for what the dead
    worker held, made here after data.service_timeout (the watchdog tests pin that path)."""
    count, expected, same = epoch_through_a_dying_service(tmp_path, worker_timeout="2", service_timeout=5)
    assert count == expected and same  # every example exactly once, the local pipeline's pixels
