"""How jobs run on Ray: the ``ray`` section every job has, and Ray Train's workers and checkpoints."""

from __future__ import annotations

import dataclasses
from typing import Any

from restore_core.config_loader import ranged
from restore_core.config_sections import DecodeConfig, InputConfig
from restore_core.io.locations import Location


@dataclasses.dataclass(frozen=True)
class RayConfig:
    address: str = ""  # "" = start Ray in-process (or join $RAY_ADDRESS); "auto" = connect to a running cluster
    num_cpus: int = ranged(0, 0)  # in-process Ray only: CPUs it may use; 0 = every core of this machine
    num_actors: int = ranged(0, 0)  # 0 = derive from the cluster's resources
    num_cpus_per_actor: float = ranged(0.5, 0.0, low_open=True)
    num_gpus_per_actor: float = ranged(0.0, 0.0, whole_above=1.0)  # whole or fractional; 0 = CPU actors
    batch_size: int = ranged(16, 1)  # rows per map_batches call


@dataclasses.dataclass(frozen=True)
class TrainWorkersConfig:
    """Ray Train's worker group (data-parallel: each worker trains on its shard of the data)."""

    num_workers: int = ranged(2, 1)
    use_gpu: bool = False
    cpus_per_worker: float = ranged(0.5, 0.0, low_open=True)  # < 1 leaves CPUs for Ray Data's tasks on small machines
    gpus_per_worker: float = ranged(1.0, 0.0)  # with use_gpu


@dataclasses.dataclass(frozen=True)
class TrainCheckpointConfig:
    """Where Ray Train keeps the run's checkpoints (``RunConfig.storage_path``); a killed run
    resumes from the latest one when rerun with the same settings."""

    path: str = ""  # fsspec URL (s3://..., a shared folder on a cluster); "" = <output>/checkpoints
    storage_options: dict[str, Any] = dataclasses.field(default_factory=dict)  # {} = the input's; never logged
    keep: int = ranged(2, 1)  # checkpoints kept (the latest); older ones are deleted
    resume: bool = True  # false = delete earlier checkpoints at path and start afresh

    def location(self, output: Location) -> Location:
        """Where the checkpoints go: ``path`` or ``<output>/checkpoints``, opened with
        ``storage_options`` or, when those are ``{}``, the output's (the training jobs write
        their output with the input's options)."""
        path = (self.path or f"{output.path.rstrip('/')}/checkpoints").rstrip("/")
        return Location(path, self.storage_options or output.storage_options)


@dataclasses.dataclass(frozen=True)
class TrainJobConfig:
    """What every training job (train-sr, train-inpaint) has: its input, its artifact folder, the
    Ray Train worker group, checkpoints, decoding limits and Ray. The jobs add their own sections."""

    input: InputConfig = dataclasses.field(default_factory=InputConfig)
    output: str = ""  # artifact folder (fsspec URL): model.safetensors + meta.json
    workers: TrainWorkersConfig = dataclasses.field(default_factory=TrainWorkersConfig)
    checkpoints: TrainCheckpointConfig = dataclasses.field(default_factory=TrainCheckpointConfig)
    decode: DecodeConfig = dataclasses.field(default_factory=DecodeConfig)
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)

    @property
    def output_location(self) -> Location:
        """``output``, written with the input's storage options."""
        return self.input.location.at(self.output)
