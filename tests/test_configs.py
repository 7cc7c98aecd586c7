"""Config files: they load, their docstring holds their command, and every field is commented."""

from __future__ import annotations

import glob
import importlib.util
import inspect
import os
import re

import pytest

from vpt_jax import config as config_lib
from vpt_jax.study import protocol
from vpt_jax.study.config import study_config
from vpt_jax.train.setup import build_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.py"), recursive=True))


def load(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: os.path.relpath(p, ROOT))
def test_config_file_loads_and_documents_its_command(path):
    module = load(path)
    assert "python -m vpt_jax.main --config configs/" in module.__doc__
    config = module.get_config(None)
    config.lock()
    if config.kind == "paper":  # every part's studies, as each would run alone
        studies = [s for part in config.parts.values() for s in part.values()]
    else:
        studies = [config] if config.kind == "study" else []
    for study in studies:  # the template leaves what the protocol sets to the protocol
        protocol.check_template(study.run, study_config().run, study.study.grids)
    # A study's runs are its template with the protocol's fields set: build one of each study.
    runs = [protocol.run_config(s, protocol.search_specs(s.study, {}, s.run)[0]) for s in studies]
    for run in runs or [config]:
        build_run(run, num_devices=1, read_weights=False)  # every setting and name checks out
    for run in [s.run for s in studies] or [config]:
        with pytest.raises(AttributeError):
            run.optimizer.lrr = 1.0  # locked: a misspelled field fails


@pytest.mark.parametrize("builder", [config_lib.base_config, study_config])
def test_every_config_field_is_commented(builder):
    lines = inspect.getsource(builder).splitlines()
    fields = [line for line in lines if re.match(r"\s+(c|s)\.[\w.]+ = ", line)]
    assert len(fields) > 10
    uncommented = [line.strip() for line in fields if "#" not in line]
    assert not uncommented, uncommented


def test_config_arguments_are_checked():
    vtab = load(os.path.join(ROOT, "configs", "study", "vtab.py"))
    c = vtab.get_config("tasks=cifar100+pets,strategies=full+vpt_deep,seeds=1+2")
    assert c.study.datasets == ("vtab/cifar100", "vtab/oxford_iiit_pet")
    assert c.study.final.seeds == (1, 2)
    with pytest.raises(ValueError, match="config argument 'sizes=400'"):
        vtab.get_config("sizes=400")
    run = load(os.path.join(ROOT, "configs", "vtab.py")).get_config("task=dtd,strategy=full")
    assert (
        run.data.dataset == "vtab/dtd"
        and run.optimizer.lr == 0.001
        and run.strategy.num_prompts == 10
    )
    assert run.recipe == "reference" and run.train.batch_size == 128  # the paper's FT runs
    clean = load(os.path.join(ROOT, "configs", "vtab.py")).get_config("strategy=full,recipe=clean")
    assert (
        clean.recipe == "clean" and clean.train.batch_size == 64 and clean.model.dropout_rate == 0.1
    )
