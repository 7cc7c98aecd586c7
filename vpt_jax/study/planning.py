"""Which runs a study consists of right now, given the records so far.

The grid runs are known from the config; the final runs of a (dataset, strategy, size, shots) group
become known once its grid is complete and a setting is selected. A multi-stage strategy (FT-then-PT)
gives its earlier stage the setting selected for the strategy that stage is (`full`) when the study
runs that one, else the run template's `ft_stage` settings; its grid waits for that selection.
Nothing here branches on strategy names: a strategy's stages say what it inherits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import ml_collections

from vpt_jax.errors import UserError
from vpt_jax.study import protocol
from vpt_jax.study.protocol import RunSpec
from vpt_jax.study.store import StudyStore

Group = tuple[str, str, int, int]  # (dataset, strategy, size, shots)


def plan(config: ml_collections.ConfigDict, store: StudyStore) -> tuple[list[RunSpec], bool]:
    """Every run known now, and whether more will appear once runs finish (finals after selection)."""
    study = config.study
    inherited, complete = inherited_settings(config, store)
    search = protocol.search_specs(study, inherited, config.run)
    specs = list(search)
    waiting = not complete
    for selected in selections(config, store, search).values():
        if selected is None:
            waiting = True
        else:
            specs.extend(protocol.final_specs(study, selected))
    return specs, waiting


def inherited_settings(
    config: ml_collections.ConfigDict, store: StudyStore
) -> tuple[dict[tuple, tuple[float, float]], bool]:
    """The (lr, wd) each earlier stage takes, keyed by (stage strategy, dataset, size, shots).

    Returns the settings known now and whether every one a study strategy needs is known.
    """
    study = config.study
    needed = {protocol.earlier_stage(s) for s in study.strategies} - {None}
    settings: dict[tuple, tuple[float, float]] = {}
    for name in needed:
        if name in study.strategies:  # the study selects that strategy's setting itself
            for (dataset, strategy, size, shots), chosen in selections(config, store).items():
                if strategy == name and chosen is not None:
                    settings[(name, dataset, size, shots)] = (chosen.lr, chosen.weight_decay)
        else:
            template = config.run.ft_stage
            for dataset, _, size, shots in protocol.groups(study):
                settings[(name, dataset, size, shots)] = (template.lr, template.weight_decay)
    per_stage = len({(d, size, shots) for d, _, size, shots in protocol.groups(study)})
    return settings, len(settings) == len(needed) * per_stage


def validation_score(
    config: ml_collections.ConfigDict, spec: RunSpec, result: Mapping | None
) -> float:
    """A search run's last-epoch validation top-1 (nan if it diverged)."""
    if result is None or result.get("status") == "diverged":
        return math.nan
    split = protocol.eval_split(config, spec)
    return float(final_metric(result, f"{split}_top1", spec))


def final_metric(result: Mapping, key: str, spec: RunSpec) -> float:
    """A metric of a finished run's record; a record without it is an error, never a silent nan."""
    try:
        return result["final"][key]
    except (KeyError, TypeError):
        raise UserError(
            f"the record of {spec.run_id} has no {key} (an incomplete result.json, written by an "
            "older version after a kill); delete that run's result.json to have it recomputed"
        ) from None


def selections(
    config: ml_collections.ConfigDict, store: StudyStore, search: list[RunSpec] | None = None
) -> dict[Group, RunSpec | None]:
    """The selected setting of each group whose grid is complete (None while it is not).

    Without `search`: the groups of single-stage strategies (whose grids need no selection).
    """
    if search is None:
        search = protocol.search_specs(config.study, {}, config.run)
    groups: dict[Group, list[RunSpec]] = {}
    for spec in search:
        groups.setdefault(spec.group, []).append(spec)
    out: dict[Group, RunSpec | None] = {}
    for group, specs in groups.items():
        results = [store.result(s) for s in specs]
        if any(r is None for r in results):
            out[group] = None
        else:
            scored = [
                (s, validation_score(config, s, r)) for s, r in zip(specs, results, strict=True)
            ]
            out[group] = protocol.select(scored)
    return out


def missing_runs(config: ml_collections.ConfigDict, store: StudyStore) -> tuple[list[str], bool]:
    """Run ids not finished yet, and whether further runs (finals) still depend on them."""
    specs, waiting = plan(config, store)
    return [s.run_id for s in specs if not store.done(s)], waiting
