"""How a process decides to join a job (config, environment, detected clusters) and the
agreement checks, in one process: no process is started and nothing is initialized."""

from __future__ import annotations

import hashlib
import os

import jax
import numpy as np
import pytest
from jax.experimental import multihost_utils

from jaxgpt import distributed
from jaxgpt.distributed import DistConfig, init_arguments

TIMEOUTS = {"initialization_timeout": 300, "heartbeat_timeout_seconds": 100}
EXPLICIT = {"JAXGPT_COORDINATOR": "10.0.0.1:1234", "JAXGPT_NUM_PROCESSES": "4"}
# A Cloud TPU VM is detected from its device file whatever the environment says.
on_tpu_vm = pytest.mark.skipif(os.path.exists("/dev/accel0"), reason="a TPU VM is detected")


def joined(coordinator: str, num: int, pid: int, **timeouts) -> dict:
    return {
        "coordinator_address": coordinator,
        "num_processes": num,
        "process_id": pid,
        **{**TIMEOUTS, **timeouts},
    }


@on_tpu_vm
def test_nothing_set_is_a_single_process():
    assert init_arguments(DistConfig(), {}) is None
    assert init_arguments(DistConfig(), {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None
    assert init_arguments(DistConfig(), {"SLURM_JOB_ID": "7"}) is None  # one task by default
    assert init_arguments(DistConfig(), {"OMPI_COMM_WORLD_SIZE": "1"}) is None
    assert init_arguments(DistConfig(), {"TPU_WORKER_HOSTNAMES": "host-0"}) is None
    assert init_arguments(DistConfig(), {"SLURM_NTASKS": "4"}) is None  # no job id: no SLURM


def test_explicit_config():
    cfg = DistConfig(coordinator="10.0.0.1:1234", num_processes=2, process_id=1,
                     initialization_timeout_s=60, heartbeat_timeout_s=10)  # fmt: skip
    assert init_arguments(cfg, {}) == {
        "coordinator_address": "10.0.0.1:1234",
        "num_processes": 2,
        "process_id": 1,
        "initialization_timeout": 60,
        "heartbeat_timeout_seconds": 10,
    }


def test_environment_variables():
    env = {**EXPLICIT, "JAXGPT_PROCESS_ID": "3"}
    assert init_arguments(DistConfig(), env) == joined("10.0.0.1:1234", 4, 3)


def test_config_wins_over_the_environment_field_by_field():
    env = {**EXPLICIT, "JAXGPT_PROCESS_ID": "3"}
    cfg = DistConfig(coordinator="head:99", process_id=0)
    # Coordinator and process id from the config, the process count from the environment.
    assert init_arguments(cfg, env) == joined("head:99", 4, 0)
    assert init_arguments(DistConfig(num_processes=8), env) == joined("10.0.0.1:1234", 8, 3)


def test_explicit_settings_win_over_a_detected_cluster():
    env = {**EXPLICIT, "JAXGPT_PROCESS_ID": "2", "SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}
    assert init_arguments(DistConfig(), env) == joined("10.0.0.1:1234", 4, 2)


@pytest.mark.parametrize(
    "env",
    [
        {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2"},
        {"OMPI_COMM_WORLD_SIZE": "4"},
        {"TPU_WORKER_HOSTNAMES": "host-0,host-1"},
        {"TPU_ACCELERATOR_TYPE": "v5p-16"},
        {"TPU_NAME": "my-pod"},
    ],
)
def test_a_detected_cluster_lets_jax_read_it(env):
    """No coordinator, count or id: jax.distributed.initialize reads them itself."""
    assert init_arguments(DistConfig(heartbeat_timeout_s=5), env) == {
        "initialization_timeout": 300,
        "heartbeat_timeout_seconds": 5,
    }


def test_disabled_is_a_single_process_even_when_configured():
    everything = {**EXPLICIT, "JAXGPT_PROCESS_ID": "0", "SLURM_JOB_ID": "7", "SLURM_NTASKS": "2"}
    cfg = DistConfig(enabled=False, coordinator="head:99", num_processes=2, process_id=0)
    assert init_arguments(cfg, everything) is None


@pytest.mark.parametrize(
    ("cfg", "env", "got"),
    [
        (DistConfig(coordinator="head:99"), {}, "(got 0 and -1)"),
        (DistConfig(coordinator="head:99", num_processes=2), {}, "(got 2 and -1)"),
        (DistConfig(coordinator="head:99", num_processes=2, process_id=2), {}, "(got 2 and 2)"),
        (DistConfig(), {"JAXGPT_COORDINATOR": "h:1", "JAXGPT_PROCESS_ID": "0"}, "(got 0 and 0)"),
        (DistConfig(), {**EXPLICIT, "JAXGPT_PROCESS_ID": "4"}, "(got 4 and 4)"),
    ],
)
def test_incomplete_settings_fail_saying_what_to_set(cfg, env, got):
    with pytest.raises(ValueError) as error:
        init_arguments(cfg, env)
    message = str(error.value)
    assert got in message
    assert "dist.num_processes >= 1 and 0 <= dist.process_id < num_processes" in message
    assert "JAXGPT_NUM_PROCESSES / JAXGPT_PROCESS_ID" in message


def test_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("JAXGPT_COORDINATOR", "127.0.0.1:5555")
    monkeypatch.setenv("JAXGPT_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAXGPT_PROCESS_ID", "1")
    assert init_arguments(DistConfig()) == joined("127.0.0.1:5555", 2, 1)


def test_initialize_passes_the_arguments_to_jax(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    for key in ("JAXGPT_COORDINATOR", "JAXGPT_NUM_PROCESSES", "JAXGPT_PROCESS_ID"):
        monkeypatch.delenv(key, raising=False)
    assert distributed.initialize(DistConfig(enabled=False)) is False
    assert calls == []
    cfg = DistConfig(coordinator="127.0.0.1:5555", num_processes=2, process_id=0)
    # The stand-in joins nothing, so this stays one process: initialize says so.
    assert distributed.initialize(cfg) is False
    assert calls == [joined("127.0.0.1:5555", 2, 0)]
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
    distributed.initialize(cfg)  # already joined (e.g. by a caller): not again
    assert len(calls) == 1


def test_fingerprint():
    f = distributed.fingerprint("model.n_layer=12")
    assert f.dtype == np.int32 and f.shape == (4,) and f.flags.writeable
    digest = hashlib.sha256(b"model.n_layer=12").digest()[:16]
    assert f.tobytes() == digest
    assert np.array_equal(f, distributed.fingerprint("model.n_layer=12"))
    assert not np.array_equal(f, distributed.fingerprint("model.n_layer=13"))
    assert distributed.fingerprint("é").tobytes() == hashlib.sha256("é".encode()).digest()[:16]


def test_one_process_needs_no_collectives(monkeypatch):
    def no_collectives(*args, **kwargs):
        raise AssertionError("a single process must not call a collective")

    monkeypatch.setattr(multihost_utils, "process_allgather", no_collectives)
    monkeypatch.setattr(multihost_utils, "sync_global_devices", no_collectives)
    assert jax.process_count() == 1
    assert distributed.any_process(True) is True
    assert distributed.any_process(False) is False
    distributed.check_same_everywhere("config", "anything")
    distributed.barrier("start")


class TwoProcesses:
    """jax as process 0 of 2 sees it: process_allgather stacks what each process gave."""

    def __init__(self, monkeypatch, other):
        self.other, self.barriers = other, []
        monkeypatch.setattr(jax, "process_count", lambda: 2)
        monkeypatch.setattr(multihost_utils, "process_allgather", self.allgather)
        monkeypatch.setattr(multihost_utils, "sync_global_devices", self.barriers.append)

    def allgather(self, mine):
        return np.stack([np.asarray(mine), np.asarray(self.other(mine))])


def test_any_process_agrees_with_the_others(monkeypatch):
    TwoProcesses(monkeypatch, lambda mine: np.array([1], np.int32))
    assert distributed.any_process(False) is True  # the other process got the signal
    TwoProcesses(monkeypatch, lambda mine: np.array([0], np.int32))
    assert distributed.any_process(False) is False
    assert distributed.any_process(True) is True


def test_check_same_everywhere_names_the_processes_that_differ(monkeypatch):
    TwoProcesses(monkeypatch, lambda mine: mine)
    distributed.check_same_everywhere("config", "same")
    TwoProcesses(monkeypatch, lambda mine: distributed.fingerprint("other"))
    with pytest.raises(ValueError, match=r"the config differs between processes: processes \[1\]"):
        distributed.check_same_everywhere("config", "mine")


def test_barrier_syncs_by_name(monkeypatch):
    two = TwoProcesses(monkeypatch, lambda mine: mine)
    distributed.barrier("checkpoint 10")
    assert two.barriers == ["checkpoint 10"]
