"""Static sharding: worker i of n runs a fixed share of a study's runs, with no claims at all.

For schedulers that give each task an index (Slurm job arrays, Kubernetes indexed jobs): every task
starts the same study with `--config.study.shard=i/n` (or `slurm`, which reads the array's
`SLURM_ARRAY_TASK_ID`, `SLURM_ARRAY_TASK_MIN` and `SLURM_ARRAY_TASK_COUNT`). A run belongs to the
shard `crc32(run_id) mod n`, so every task computes the same partition without talking to the
others, and a final run belongs to a shard as soon as its grid's selection makes it known. A shard
whose remaining runs wait for other shards' grid searches polls the study directory for them.
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from collections.abc import Mapping

from vpt_jax.errors import UserError
from vpt_jax.study.protocol import RunSpec

SLURM = "slurm"


@dataclasses.dataclass(frozen=True)
class Shard:
    index: int  # 0 .. count - 1
    count: int

    def owns(self, spec: RunSpec, key: str | None = None) -> bool:
        """Whether the run is this shard's; `key`: its store key where that is not its run id
        (runs shared between the studies of a paper are sharded by their pool key)."""
        return zlib.crc32((key or spec.run_id).encode()) % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str, environ: Mapping[str, str] | None = None) -> Shard | None:
    """`""` -> None (share by claims); `"i/n"` -> Shard(i, n); `"slurm"` -> the array task's.

    Raises:
      UserError: a malformed value, an index outside 0..n-1, or `slurm` outside a job array.
    """
    if not text:
        return None
    if text == SLURM:
        return _from_slurm(os.environ if environ is None else environ)
    index, sep, count = text.partition("/")
    if not (sep and index.isdigit() and count.isdigit()) or not int(index) < int(count):
        raise UserError(
            f"study.shard={text!r}: use i/n with 0 <= i < n (e.g. 0/8), or {SLURM!r} in a Slurm "
            "job array"
        )
    return Shard(int(index), int(count))


def _from_slurm(environ: Mapping[str, str]) -> Shard:
    names = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_COUNT")
    values = [environ.get(name, "") for name in names]
    if not all(v.isdigit() for v in values):
        raise UserError(
            f"study.shard='slurm' reads {', '.join(names)}, which are not all set here (this is "
            "not a Slurm job array task); submit with `sbatch --array=0-N` or give i/n"
        )
    task, first, count = (int(v) for v in values)
    return parse_shard(f"{task - first}/{count}")
