"""Data-parallel training: sharding, the environment, and real 2-process runs under torchrun (gloo, CPU)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from bnnkit import models
from bnnkit.artifacts import read_tensors
from bnnkit.data import make_loader
from bnnkit.train import distributed
from bnnkit.train.distributed import DistributedContext
from bnnkit.train.loop import epoch_seed

CPU = torch.device("cpu")
WORKER = os.path.join(os.path.dirname(__file__), "ddp_worker.py")
FLOAT64_TOL = dict(rtol=1e-10, atol=1e-12)


def contexts(world_size, device=CPU):
    return [DistributedContext(device, rank=r, local_rank=r, world_size=world_size) for r in range(world_size)]


def batches(dataset, global_batch, seed, epoch, context):
    sampler = distributed.train_sampler(dataset, epoch_seed(seed, 0), epoch, context)
    loader = make_loader(dataset, context.local_batch_size(global_batch), shuffle=True, sampler=sampler)
    return [y.tolist() for _, y in loader]


@pytest.mark.parametrize("world_size", [2, 4])
def test_processes_together_step_through_the_single_process_batches(world_size):
    n, global_batch, seed = 40, 8, 3
    dataset = torch.utils.data.TensorDataset(torch.zeros(n, 1), torch.arange(n))
    for epoch in (0, 1, 7):
        single = batches(dataset, global_batch, seed, epoch, DistributedContext(CPU))
        # one process: a permutation drawn from a generator seeded with (seed, epoch) alone
        order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)))
        assert single == [chunk.tolist() for chunk in order.split(global_batch)]
        shards = [batches(dataset, global_batch, seed, epoch, c) for c in contexts(world_size)]
        assert all(len(s) == len(single) for s in shards)
        for step, expected in enumerate(single):
            assert sorted(sum((s[step] for s in shards), [])) == sorted(expected)
    assert single != batches(dataset, global_batch, seed, 0, DistributedContext(CPU))  # reshuffled per epoch


def test_uneven_training_set_pads_equal_shares_and_test_set_is_split_exactly():
    dataset = torch.utils.data.TensorDataset(torch.zeros(10, 1), torch.arange(10))
    shards = [sum(batches(dataset, 4, 0, 0, c), []) for c in contexts(4)]
    assert [len(s) for s in shards] == [3, 3, 3, 3]  # 10 samples, 2 repeated so every process has 3
    assert set(sum(shards, [])) == set(range(10))
    parts = [list(distributed.eval_sampler(10, c)) for c in contexts(4)]
    assert sorted(sum(parts, [])) == list(range(10))
    assert distributed.eval_sampler(10, DistributedContext(CPU)) is None


def test_global_batch_must_split_evenly():
    assert DistributedContext(CPU, world_size=4).local_batch_size(256) == 64
    with pytest.raises(ValueError, match="must be a multiple of 3 .e.g. 255 or 258"):
        DistributedContext(CPU, world_size=3).local_batch_size(256)


def test_rank_seeds_differ_and_rank_0_keeps_the_single_process_seed():
    seeds = [c.rank_seed(12345) for c in contexts(4)]
    assert seeds[0] == 12345 and len(set(seeds)) == 4 and all(0 <= s < 2**63 for s in seeds)


def test_environment_is_read_from_torchrun_variables(monkeypatch):
    for name in distributed.ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    assert distributed.environment() is None
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match="LOCAL_RANK, WORLD_SIZE missing"):
        distributed.environment()
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.environment() is None  # one process: the single-process path
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert distributed.environment() == (3, 1, 4)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="inconsistent distributed environment: RANK=4"):
        distributed.environment()
    monkeypatch.setenv("WORLD_SIZE", "four")
    with pytest.raises(ValueError, match="must be integers"):
        distributed.environment()


def test_single_process_setup_changes_nothing(monkeypatch):
    for name in distributed.ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    with distributed.setup(CPU) as context:
        assert context == DistributedContext(CPU) and context.is_main and not context.enabled
        model = nn.Linear(2, 2)
        assert context.wrap(model) is model and context.convert_sync_batchnorm(model) is model
        assert context.sum([1.5, 2]) == [1.5, 2.0]
        assert context.in_turn(lambda: 7) == 7
    assert not torch.distributed.is_initialized()


def test_device_per_process_errors():
    with pytest.raises(ValueError, match="each process takes cuda:LOCAL_RANK"):
        distributed._rank_device(torch.device("cuda", 1), local_rank=0)
    assert distributed._rank_device(CPU, local_rank=3) == CPU


def test_sync_bn_converts_batchnorm_keeping_the_state_names_and_refuses_cpu():
    model = models.create("digits_cnn", channels=4)
    names = set(model.state_dict())
    with pytest.raises(ValueError, match="--sync-bn needs CUDA devices"):
        DistributedContext(CPU, world_size=2).convert_sync_batchnorm(model)
    gpu = DistributedContext(torch.device("cuda", 0), world_size=2)
    converted = gpu.convert_sync_batchnorm(model)  # module surgery only: needs no GPU
    kinds = {type(m) for m in converted.modules()}
    assert nn.SyncBatchNorm in kinds and not kinds & {nn.BatchNorm1d, nn.BatchNorm2d}
    assert set(converted.state_dict()) == names


# --- real processes ------------------------------------------------------------------------------

def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in distributed.ENV_VARS}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


def _worker(args, **env):
    return subprocess.Popen([sys.executable, WORKER, *args], env=_env(**env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _torchrun(nproc, args, **env):
    # --standalone: a rendezvous on localhost with a free port chosen by the OS
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             f"--nproc_per_node={nproc}", WORKER, *args], env=_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc, timeout=300):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _metrics(run):
    return [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]


def _assert_close(a, b, what):
    assert a.keys() == b.keys(), what
    for k in a:
        torch.testing.assert_close(a[k], b[k], **FLOAT64_TOL, msg=lambda m: f"{what}, {k}: {m}")


def test_two_processes_train_as_one_with_the_same_global_batch_and_resume_on_one(tmp_path):
    """2 processes (gloo) on the synthetic set: after every epoch both hold the same weights;
    after the first epoch they equal a 1-process run's with the same global batch of 64 (in
    float64). Later epochs are not compared with the 1-process run: a GEMM over 32 rows and one
    over 64 may round differently, and one binarized value that lands on the other side of 0
    sends the two trajectories apart, as it did with ATen's scalar kernels. The run is
    interrupted after 2 of 3 epochs and resumed in 1 process, exactly: two resumes of the same
    checkpoint end bitwise equal."""
    common = ["train", "--model", "ddp_test_ln_mlp", "--dataset", "synthetic", "--epochs", "3",
              "--batch-size", "64", "--device", "cpu", "--no-progress"]
    ref, ddp = str(tmp_path / "ref"), str(tmp_path / "ddp")
    single = _worker([*common, "--out", ref], BNNKIT_TEST_DTYPE="float64", BNNKIT_TEST_DUMP=str(tmp_path / "d1"))
    pair = _torchrun(2, [*common, "--out", ddp], BNNKIT_TEST_DTYPE="float64",
                     BNNKIT_TEST_DUMP=str(tmp_path / "d2"), BNNKIT_TEST_STOP_AFTER="2")
    rc, out = _finish(single)
    assert rc == 0, out
    rc, out = _finish(pair)
    assert rc != 0 and out.count("bnnkit train: interrupted") == 2, out

    for epoch in (0, 1):
        rank0 = read_tensors(str(tmp_path / "d2" / f"rank0_epoch{epoch}.safetensors"))
        rank1 = read_tensors(str(tmp_path / "d2" / f"rank1_epoch{epoch}.safetensors"))
        assert rank0["fc1.weight"].dtype == torch.float64
        assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), f"ranks differ after epoch {epoch}"
    one = read_tensors(str(tmp_path / "d1" / "rank0_epoch0.safetensors"))
    _assert_close(read_tensors(str(tmp_path / "d2" / "rank0_epoch0.safetensors")), one,
                  "2 processes vs 1 after epoch 0")
    rows, ref_rows = _metrics(ddp), _metrics(ref)
    assert [r["epoch"] for r in rows] == [0, 1]  # one line per epoch: only rank 0 writes
    assert [r["world_size"] for r in rows] == [2, 2]
    for row, ref_row in zip(rows, ref_rows):
        assert row["lr"] == ref_row["lr"] and row["o"] == ref_row["o"]
    row, ref_row = rows[0], ref_rows[0]
    assert row["train_acc"] == ref_row["train_acc"] and row["test_acc"] == ref_row["test_acc"]
    for key in ("train_loss", "test_loss", "estimating_error", "gradient_stability"):
        assert row[key] == pytest.approx(ref_row[key], rel=1e-9, abs=1e-12), key

    import shutil
    copy = str(tmp_path / "ddp-copy")
    shutil.copytree(ddp, copy)
    for run in (ddp, copy):
        rc, out = _finish(_worker(["train", "--out", run, "--resume", "--no-progress"], BNNKIT_TEST_DTYPE="float64"))
        assert rc == 0 and "resuming" in out, out
    resumed, again = (read_tensors(os.path.join(run, "checkpoint.safetensors")) for run in (ddp, copy))
    assert resumed.keys() == again.keys() and all(torch.equal(resumed[k], again[k]) for k in resumed)
    assert [r["world_size"] for r in _metrics(ddp)] == [2, 2, 1]


def test_batchnorm_model_keeps_ranks_identical_and_checkpoints_rank_0(tmp_path):
    """A zoo model with BatchNorm (no --sync-bn): parameters stay identical across processes,
    running statistics are rank 0's on every process when evaluating, and rank 0 alone writes."""
    run = str(tmp_path / "run")
    rc, out = _finish(_torchrun(2, ["train", "--model", "digits_cnn", "--model-arg", "channels=4", "--dataset",
                                    "synthetic", "--epochs", "1", "--batch-size", "32", "--device", "cpu",
                                    "--no-progress", "--out", run], BNNKIT_TEST_DUMP=str(tmp_path / "d")))
    assert rc == 0, out
    assert out.count("best test accuracy") == 1, out  # one final line, from rank 0 only
    rank0 = read_tensors(str(tmp_path / "d" / "rank0_epoch0.safetensors"))
    rank1 = read_tensors(str(tmp_path / "d" / "rank1_epoch0.safetensors"))
    assert any(k.endswith("running_var") for k in rank0)
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    saved = read_tensors(os.path.join(run, "model.safetensors"))
    assert all(torch.equal(saved[k], rank0[k]) for k in rank0)
    assert [r["world_size"] for r in _metrics(run)] == [2]


def test_readme_torchrun_commands_use_only_known_train_options():
    import re
    import shlex

    from bnnkit.cli import build_parser
    from bnnkit.cli.train_cmd import config_from_args

    readme = open(os.path.join(os.path.dirname(__file__), os.pardir, "README.md")).read()
    commands = re.findall(r"^`?(torchrun .*? -m bnnkit train .*?)`?\.?$", readme, re.M)
    assert len(commands) >= 3
    for command in commands:
        words = shlex.split(command)
        args = build_parser().parse_args(words[words.index("-m") + 2:])
        config = config_from_args(args)
        assert config.sync_bn == ("--sync-bn" in words)
