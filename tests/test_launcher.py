"""launch/multiworker.py's own parts and launch/horovod.sh's refusals, without starting TensorFlow."""

from __future__ import annotations

import importlib.util
import random
import socket
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def launcher():
    spec = importlib.util.spec_from_file_location("multiworker_launcher", ROOT / "launch" / "multiworker.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ports_are_free_distinct_and_outside_the_ephemeral_range(launcher):
    low, high = launcher.ephemeral_range()
    ports = launcher.free_ports(8, "127.0.0.1")
    assert len(set(ports)) == 8
    assert not any(low <= p <= high for p in ports)  # no outgoing connection can be handed one of them
    for p in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


def test_a_port_in_use_is_passed_over(launcher):
    rng_seed = 7
    first = launcher.free_ports(1, "127.0.0.1", random.Random(rng_seed))[0]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", first))
        busy.listen()
        again = launcher.free_ports(1, "127.0.0.1", random.Random(rng_seed))[0]
    assert again != first  # same random order, but the taken port is skipped


def test_tf_config_names_every_worker_and_this_index(launcher):
    import json

    cfg = json.loads(launcher.tf_config(["localhost:1", "localhost:2"], 1))
    assert cfg == {"cluster": {"worker": ["localhost:1", "localhost:2"]}, "task": {"type": "worker", "index": 1}}


def test_no_command_is_a_one_line_error(launcher, capsys):
    assert launcher.main(["--workers", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "put the command after --" in err[0]


def test_horovod_sh_without_a_process_count_is_one_line():
    usage = subprocess.run(
        ["bash", str(ROOT / "launch" / "horovod.sh"), "--", "imgtrain"], capture_output=True, text=True
    )
    assert usage.returncode == 2 and "give -np N" in usage.stderr
    assert len(usage.stderr.strip().splitlines()) == 1, usage.stderr
