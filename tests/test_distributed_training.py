"""FSDP2 data-parallel training on 2 gloo processes (CPU): the distiller and the LoRA finetune.

The reference is one process on the same global batch: its batch is rank 0's clips followed by rank 1's, and the
noise is drawn once for the whole batch, so N processes must compute what one computes up to float summation
order (gradients are reduce-scattered over the ranks instead of summed over the rows in one process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from alice_core.errors import AliceError
from alice_core.train import finetune as ft
from alice_core.train.clips import TrainingClip
from alice_core.train.data import SyntheticVideoData
from alice_core.train.distill import DistillConfig, Distiller
from alice_core.train.distributed import full_tensors
from alice_core.train.finetune import FinetuneCancelled, FinetuneConfig, finetune
from alice_core.train.state import load_checkpoint, save_atomic
from tests.bundles import random_tiny_bundle
from tests.test_finetune import _checkpoint_stage, _clips
from tests.test_rcm import DATA_CFG, random_dit, tiny_data

WORLD = 2
CFG = DistillConfig(mode="rcm", batch_size=2, tangent_warmup=1, student_update_freq=2, max_simulation_steps=2)
# Float32 summation order differs between one and two processes: gradients agree to GRAD_RTOL of the largest one.
# AdamW (beta1 = 0 here) moves a weight by about lr * g / (|g| + eps), so a weight whose gradient is at float-noise
# level (|g| ~ eps) can move by a different fraction of lr: weights agree within WEIGHT_ATOL, a quarter of lr.
GRAD_RTOL = 1e-4
WEIGHT_ATOL = 0.25 * CFG.student_lr


def _join(rank: int, init_file: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)


def _snapshot(d: Distiller, grads: bool = True) -> dict[str, dict[str, torch.Tensor]]:
    """Copies of the gathered networks, EMA and (after steps) the last gradients, on every rank."""
    nets = {"student": d.student.state_dict(), "fake": d.fake.state_dict(), "ema": d.ema.state_dict()}
    if grads:
        nets.update(student_grad={k: p.grad for k, p in d.student.named_parameters()},
                    fake_grad={k: p.grad for k, p in d.fake.named_parameters()})
    return {k: {n: t.clone() for n, t in full_tensors(v, all_ranks=True).items()} for k, v in nets.items()}


def _distill_worker(rank: int, init_file: str, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    _join(rank, init_file)
    data, text = tiny_data(seed=rank)  # each rank renders its own clips
    with pytest.raises(AliceError, match="--batch-size 3 .* divisible by the 2 processes"):
        Distiller(random_dit(0, DATA_CFG), DistillConfig(batch_size=3), data, text.encode([""]), torch.device("cpu"))
    d = Distiller(random_dit(0, DATA_CFG), CFG, data, text.encode([""]), torch.device("cpu"))
    weight = d.student.blocks[0].ffn[0].weight
    assert isinstance(weight, DTensor) and weight.to_local().numel() * WORLD == weight.numel()  # sharded
    logs = [d.step() for _ in range(3)]  # student (sCM), critic, student (sCM + DMD)
    state = d.state_dict()
    if rank == 0:
        save_atomic(state, Path(out) / "checkpoint.pt")
    at3 = _snapshot(d)
    logs += [d.step() for _ in range(2)]
    torch.save({"at3": at3, "at5": _snapshot(d), "logs": logs}, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


class _GlobalBatch:
    """One process's view of the 2-rank run: rank 0's rows, then rank 1's, from the same two seeded streams."""

    def __init__(self, streams: list[SyntheticVideoData]) -> None:
        self.streams = streams
        self.rng = streams[0].rng  # what a checkpoint stores and restores of rank 0

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        parts = [s.batch(n // len(self.streams)) for s in self.streams]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), [c for p in parts for c in p[2]]


def _single_process_distiller() -> Distiller:
    data0, text = tiny_data(seed=0)
    data1 = SyntheticVideoData(data0.autoencoder, text, size=data0.size, frames=data0.frames, rng=np.random.default_rng(1))
    return Distiller(random_dit(0, DATA_CFG), CFG, _GlobalBatch([data0, data1]), text.encode([""]), torch.device("cpu"))


def _assert_close(got: dict, want: dict, what: str) -> None:
    for net in got:
        tol = GRAD_RTOL * max(v.abs().max().item() for v in want[net].values()) if net.endswith("_grad") else WEIGHT_ATOL
        for k in want[net]:
            diff = (got[net][k] - want[net][k]).abs().max().item()
            assert diff <= tol, f"{what}: {net}.{k} differs by {diff:.2e} (tolerance {tol:.2e})"


def test_distiller_on_two_processes_equals_one_process_and_resumes_on_one(tmp_path):
    mp.spawn(_distill_worker, args=(str(tmp_path / "pg"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for net in ranks[0]["at5"]:  # the replicas' gathered weights agree
        for k, v in ranks[0]["at5"][net].items():
            assert torch.equal(v, ranks[1]["at5"][net][k]), f"{net}.{k} differs between the ranks"

    single = _single_process_distiller()
    start = {k: v.clone() for k, v in single.student.state_dict().items()}
    single_logs = [single.step() for _ in range(3)]
    _assert_close(_snapshot(single), ranks[0]["at3"], "2 processes vs 1 after 3 steps")
    single_logs += [single.step() for _ in range(2)]
    _assert_close(_snapshot(single), ranks[0]["at5"], "2 processes vs 1 after 5 steps")
    for got, want in zip(ranks[0]["logs"], single_logs):  # logged losses: the global batch's mean
        assert got.keys() == want.keys() and all(abs(got[k] - want[k]) <= 1e-4 * max(1.0, abs(want[k])) for k in got)
    assert any((start[k] - v).abs().max() > 10 * WEIGHT_ATOL for k, v in ranks[0]["at5"]["student"].items())  # it trained

    # The checkpoint (gathered on rank 0, one file) resumes on one process, whose batch is both ranks' clips.
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert len(state["numpy_rng"]) == WORLD  # each rank's data stream
    resumed = _single_process_distiller()
    resumed.load_state_dict(state)
    resumed.data.streams[1].rng.bit_generator.state = json.loads(state["numpy_rng"][1])
    assert resumed.iteration == 3
    _assert_close(_snapshot(resumed, grads=False), ranks[0]["at3"], "resumed weights")
    for opt in ("opt_student", "opt_fake"):
        moments = state[opt]["state"][0]
        assert set(moments) == {"step", "exp_avg", "exp_avg_sq"} and moments["exp_avg_sq"].abs().sum() > 0
    for _ in range(2):
        resumed.step()
    assert resumed.iteration == 5
    _assert_close(_snapshot(resumed), ranks[0]["at5"], "resumed on 1 process vs 2 processes throughout")


FT = dict(rank=2, alpha=2.0, teacher_steps=2, student_steps=4, batch_size=2, checkpoint_every=1, tangent_warmup=1)


def _finetune_worker(rank: int, init_file: str, bundle: str, clip: TrainingClip, out: str, work: str) -> None:
    import torch.distributed as dist

    _join(rank, init_file)
    calls = []

    def cancel() -> bool:  # rank 0 alone asks, before student iteration 3: every rank must stop there
        calls.append(1)
        return rank == 0 and len(calls) == FT["teacher_steps"] + 3

    with pytest.raises(FinetuneCancelled):
        finetune(bundle, [clip], FinetuneConfig(**FT), out, work, should_cancel=cancel)
    dist.destroy_process_group()


def test_finetune_on_two_processes_writes_once_and_resumes_on_one(tmp_path):
    """One training clip: every rank's batch is that clip, so 1 and 2 processes see the same global batch."""
    bundle, clip = random_tiny_bundle(tmp_path / "bundle"), _clips(1)[0]
    out, work = tmp_path / "loras" / "ft.safetensors", tmp_path / "work"
    out.parent.mkdir()
    mp.spawn(_finetune_worker, args=(str(tmp_path / "pg"), str(bundle.folder), clip, str(out), str(work)),
             nprocs=WORLD, join=True)
    assert sorted(p.name for p in out.parent.iterdir()) == ["ft.teacher.safetensors"]  # rank 0's, no temp files
    assert sorted(p.name for p in work.iterdir()) == [ft.CHECKPOINT_NAME]
    assert _checkpoint_stage(work) == ("student", 2)

    reference = finetune(bundle.folder, [clip], FinetuneConfig(**FT), tmp_path / "ref.safetensors", tmp_path / "ref-work")
    resumed = finetune(bundle.folder, [clip], FinetuneConfig(**FT), out, work)  # one process continues the run
    for got, want, lr in ((resumed.teacher_lora, reference.teacher_lora, ft.FinetuneConfig.teacher_lr),
                          (resumed.student_lora, reference.student_lora, ft.FinetuneConfig.student_lr)):
        got, want = load_file(str(got)), load_file(str(want))
        assert got.keys() == want.keys()
        for k in want:
            diff = (got[k] - want[k]).abs().max().item()
            assert diff <= 0.25 * lr, f"{k} differs by {diff:.2e} from one process's run"
        assert any(want[k].abs().max() > lr for k in want if k.endswith("lora_B.weight"))  # it trained


@pytest.mark.slow
def test_torchrun_distill_writes_on_rank_0_and_the_installed_command_resumes_it(tmp_path):
    bundle, out = random_tiny_bundle(tmp_path / "bundle"), tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    bin_dir = Path(sys.executable).parent
    args = ["train", "distill", "--teacher-bundle", str(bundle.folder), "--out", str(out), "--threads", "1",
            "--tangent-warmup", "1", "--student-update-freq", "2", "--checkpoint-every", "1"]
    torchrun = [str(bin_dir / "torchrun"), "--standalone", "--nproc-per-node", "2", "-m", "alice_core", *args]

    bad = subprocess.run([*torchrun, "--batch-size", "3"], capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode != 0 and not out.exists()
    errors = [line for line in bad.stderr.splitlines() if line.startswith("alice: error:")]
    # One line from each rank that prints it before torchrun stops the group on the first rank's exit (a rank slowed
    # down by a busy machine can be stopped first: seen with the 2 cores loaded), no traceback of ours.
    assert 1 <= len(errors) <= 2 and set(errors) == {
        "alice: error: --batch-size 3 is the global batch and must be divisible by the 2 processes; use a multiple of 2"}

    run = subprocess.run([*torchrun, "--batch-size", "2", "--steps", "2"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == [str(out / "checkpoint.pt")]  # printed by rank 0 alone
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "loss.jsonl"]
    assert len((out / "loss.jsonl").read_text().splitlines()) == 2  # one writer
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["step"] == 2 and len(state["numpy_rng"]) == 2

    resumed = subprocess.run([str(bin_dir / "alice"), *args, "--batch-size", "2", "--steps", "3"], capture_output=True,
                             text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 3
    assert len((out / "loss.jsonl").read_text().splitlines()) == 3
