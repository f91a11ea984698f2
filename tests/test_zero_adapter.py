"""Canary: the installed DeepSpeed still has the ZeRO internals jigsaw_ds/checkpoint/zero.py reads, and they mean
what the checkpoints assume, for each shipped DeepSpeed config (in one process: a partition of a world of one
holds the whole parameter, so every fragment is the parameter itself; tests/test_checkpoint.py covers the
fragments of several ranks through the checkpoints)."""
import json
import os

import pytest
import torch
import torch.distributed as dist

from conftest import ROOT
from jigsaw_ds.checkpoint import zero
from jigsaw_ds.errors import MissingLibrary

pytestmark = pytest.mark.multirank  # DeepSpeed loads (on first use: builds) its CPU comm op in a compiler process


@pytest.fixture(scope="module")
def world():
    """A world of one process (gloo), for this module only: DeepSpeed keeps its groups for the process's life,
    so the engines below share one process group."""
    from jigsaw_ds.parallel.topology import init_distributed

    saved = dict(os.environ)
    init_distributed("gloo")
    yield
    dist.destroy_process_group()
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module", params=["ds_zero1_fp32.json", "ds_zero2_fp32.json", "ds_zero1_bf16.json"])
def engine(request, world):
    """An engine of each shipped DeepSpeed config (the three ZeRO wrappers a run can get), without its scheduler
    (which needs the run's step count)."""
    import deepspeed

    with open(os.path.join(ROOT, "configs", request.param)) as f:
        config = {key: value for key, value in json.load(f).items() if key != "scheduler"}
    config.update(train_micro_batch_size_per_gpu=2, gradient_accumulation_steps=1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.GELU(), torch.nn.Linear(6, 3))
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    return engine


def test_deepspeed_has_the_zero_internals_and_they_mean_what_checkpoints_assume(engine):
    assert zero.missing(engine) == []
    zero.check_engine(engine)
    wrapper = zero.zero_optimizer(engine)
    params = list(engine.module.parameters())
    assert sum(flat.numel() for flat in zero.fp32_partitions(wrapper)) >= sum(p.numel() for p in params)
    for p in params:  # before any step: the fp32 master weights are the parameter's values
        values, start = zero.fragment(p)
        assert values.dtype == torch.float32 and start == 0
        assert torch.equal(values.to(p.dtype), p.detach().reshape(-1))
    assert not zero.has_adam_state(wrapper)
    moved_from = {p: zero.fragment(p)[0].clone() for p in params}

    x = torch.randn(2, 4, dtype=params[0].dtype)
    engine.backward(engine(x).square().mean())
    engine.step()
    assert zero.has_adam_state(wrapper) and zero.adam_step(wrapper) == 1
    zero.link_adam_state(wrapper)
    for p in params:  # after it: the master moved by Adam, the module refreshed from it, moments linked
        values, _ = zero.fragment(p)
        assert torch.equal(values.to(p.dtype), p.detach().reshape(-1)) and not torch.equal(values, moved_from[p])
        assert zero.fragment(p, "exp_avg")[0].abs().sum() > 0
        assert zero.fragment(p, "exp_avg_sq")[0].abs().sum() > 0

    # what a loader does: write the master, refresh the module from it, set the step counters
    first = params[0]
    with torch.no_grad():
        zero.fragment(first)[0].fill_(0.25)
    zero.update_module_weights(engine)
    assert torch.all(first.detach() == 0.25)
    zero.set_step(engine, 7)
    assert engine.global_steps == 7 and engine.global_samples == 7 * engine.train_batch_size()


def test_a_deepspeed_without_them_is_one_line_naming_what_is_missing(engine):
    first = next(engine.module.parameters())
    mapping = first._hp_mapping
    del first._hp_mapping
    try:
        with pytest.raises(MissingLibrary, match=r"lacks .*parameter 0\.weight\._hp_mapping .*deepspeed==0\.19\.8"):
            zero.check_engine(engine)
    finally:
        first._hp_mapping = mapping
