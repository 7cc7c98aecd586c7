"""A run pool: the run directories of several studies in one place, one directory per distinct run.

A paper is many studies (its parts) whose runs overlap: Tables 1-2's FT and VPT-deep runs are also
Figure 3's, the probes' baselines and the 800-image point of the data-scaling tables. In a pool a
run's directory is named by its whole run config (`run_key`), so two studies that plan the same run
find one directory, one claim and one result: it is trained once, whichever study's worker gets to
it first, and every study's report reads it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable

import ml_collections

from vpt_jax.study import protocol
from vpt_jax.study.protocol import RunSpec
from vpt_jax.study.store import StudyStore
from vpt_jax.train import records

DIGEST_CHARS = 12


def config_digest(run: ml_collections.ConfigDict | dict) -> str:
    """A short hash of a run config: equal configs, equal digests."""
    plain = run.to_dict() if isinstance(run, ml_collections.ConfigDict) else run
    text = json.dumps(records.jsonable(plain), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:DIGEST_CHARS]


def run_key(config: ml_collections.ConfigDict) -> Callable[[RunSpec], str]:
    """The pool key of a study's runs: readable (phase, dataset, strategy, training split, setting)
    and the digest of the run config (`protocol.run_config`), which alone decides equality. A
    data-scaling point of 800 and the standard train800 split are the same run; keys are cached."""
    cache: dict[RunSpec, str] = {}

    def key(spec: RunSpec) -> str:
        if spec not in cache:
            run = protocol.run_config_dict(config, spec)
            slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", spec.dataset).strip("-")
            point = run["data"]["train_split"] + (f"-{spec.shots}shot" if spec.shots else "")
            tag = spec.run_id.rsplit("/", 1)[-1]
            cache[spec] = f"{spec.phase}/{slug}/{spec.strategy}/{point}/{tag}-{config_digest(run)}"
        return cache[spec]

    return key


def pooled_store(config: ml_collections.ConfigDict, workdir: str, pool: str) -> StudyStore:
    """The store of a study whose runs live in `pool` (shared with the other studies there)."""
    return StudyStore(workdir, config.study.claim_timeout_s, pool=pool, key=run_key(config))


__all__ = ["config_digest", "pooled_store", "run_key"]
