"""Memory of substitution training, for bench/speed.py.

Peak RSS: `python -m bench.speed_memory`, a spawned child that measures the phases it is
handed one after the other (two shipped training steps; a long window without and with
activation checkpointing): each phase's RSS before its run opens, after loading and at
the peak over its steps (VmHWM, restarted after loading), against
`gistnet.memory.training_memory`'s estimate for the same run. Freed memory goes back to
the system between phases, so each grows from what is really in use.

The fused horizon loss: the bytes autograd keeps for the backward of the substitution
loss's KL and NLL at a large vocabulary, `gistnet.horizon_loss.horizon_kl_nll` against
the unfused formula (saved_tensors_hooks, distinct storages).
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.trainer_steps import open_run, step_times, timed

ROOT = Path(__file__).resolve().parents[1]


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    """Start VmHWM again from the current RSS (Linux: clear_refs 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def _release() -> None:
    """Hand freed memory back to the system (glibc keeps freed heap pages otherwise), so
    that the next phase's RSS grows from what is really in use."""
    import ctypes

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: its RSS is what it is


def memory_phase(spec: dict) -> dict:
    """Open the run `spec` names (the trainer's `_open_run`), take its steps: the RSS
    before, after loading and at the peak over the steps (MiB), the growth (from before
    to the peak; on a GPU the device memory torch allocated at most), the last step's
    time, and `gistnet.memory.training_memory`'s estimate of the same run."""
    from gistnet.memory import TeacherShape, training_memory
    from gistnet.train import _train_step

    _release()
    cuda = torch.cuda.is_available() and spec["run"]["training"]["device"].startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    before = _status_kib("VmRSS")
    with tempfile.TemporaryDirectory() as tmp:
        _request, run = open_run(Path(spec["dataset"]), spec["run"], Path(tmp))
        loaded = _status_kib("VmRSS")
        _reset_peak()
        times = step_times(lambda i: _train_step(run, i), spec["steps"] - 1, run.device)
        peak = _status_kib("VmHWM")
    # On a GPU the run's memory is the device's: what torch's allocator held at most.
    growth = torch.cuda.max_memory_allocated() if cuda else (peak - before) * 1024
    teacher = run.objective.teacher
    estimate = training_memory(
        run.model.config,
        batch_size=run.cfg.batch_size,
        objective="substitution",
        horizon=int(run.metadata["horizon"]),
        teacher=TeacherShape.from_hf_config(teacher.config),
        teacher_bytes_per_value=teacher.get_input_embeddings().weight.element_size(),
        activation_checkpointing=run.cfg.activation_checkpointing,
        reconstruct=run.cfg.reconstruct_weight > 0,
    )
    return {
        "window": int(run.metadata["horizon"]),
        "batch": run.cfg.batch_size,
        "checkpointing": run.cfg.activation_checkpointing,
        "rss_before_mib": before / 1024,
        "rss_loaded_mib": loaded / 1024,
        "peak_mib": peak / 1024,
        "measured": "cuda allocated" if cuda else "rss",
        "growth_mib": growth / 2**20,
        "estimate_mib": estimate.total / 2**20,
        "growth_of_estimate": growth / estimate.total,
        "step_s": times[-1],
    }


class MemoryChild:
    """A spawned `python -m bench.speed_memory`, so that the peaks it measures are
    of the training runs alone, not of this process's own history. Started early, its
    imports overlap the parent's setup; it says `ready`, then runs the phases it is
    handed, one after the other."""

    def __init__(self):
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.speed_memory"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )

    def wait_ready(self) -> None:
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("the memory child failed while importing")

    def measure(self, teacher: Path, device: str, phases: list[dict]) -> list[dict]:
        request = {"teacher": str(teacher), "device": device, "phases": phases}
        request = json.dumps(request) + "\n"
        out, _ = self.process.communicate(request, timeout=3600)
        if self.process.returncode != 0:
            raise RuntimeError(f"the memory child failed ({self.process.returncode})")
        return json.loads(out.strip().splitlines()[-1])

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def main() -> int:
    import gistnet.train  # noqa: F401  (imported before `ready`, while the parent sets up)
    from gistnet.teacher import load_teacher

    print("ready", flush=True)
    request = json.loads(sys.stdin.readline())
    # What the first load imports and sets up for good (the family's modelling code, the
    # thread pools, a GPU's context) is not any phase's.
    teacher = load_teacher(request["teacher"], device=request["device"])
    teacher(input_ids=torch.zeros(1, 8, dtype=torch.long, device=teacher.device))
    del teacher
    print(json.dumps([memory_phase(phase) for phase in request["phases"]]), flush=True)
    return 0


def saved_bytes(loss_of, device: torch.device) -> tuple[int, int, float]:
    """(bytes of the distinct storages autograd keeps for the backward of `loss_of()`, of
    those beside its inputs', seconds of the forward and backward)."""
    from torch.autograd.graph import saved_tensors_hooks

    kept: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    def forward_backward():
        with saved_tensors_hooks(pack, lambda tensor: tensor):
            loss, inputs = loss_of()
        loss.backward()
        own.update(t.untyped_storage().data_ptr() for t in inputs)

    own: set[int] = set()
    seconds = timed(forward_backward, device)
    return sum(kept.values()), sum(n for p, n in kept.items() if p not in own), seconds


def horizon_loss_memory(shape: tuple[int, int], vocab: int, device: torch.device) -> list[dict]:
    """The substitution loss's KL and NLL over (B, L, V) bfloat16 gist logits, fused
    against `log_softmax(logits.float())`, `kl_div` and a gather."""
    from gistnet.horizon_loss import horizon_kl_nll

    batch, length = shape
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(batch, length, vocab, generator=generator).to(device, torch.bfloat16)
    full = torch.randn(batch, length, vocab, generator=generator).log_softmax(-1).to(device)
    targets = torch.randint(0, vocab, (batch, length), generator=generator).to(device)

    def fused():
        logits = base.clone().requires_grad_(True)
        kl, nll = horizon_kl_nll(logits, full, targets)
        return kl.mean() + nll.mean(), (logits, full, targets)

    def unfused():
        logits = base.clone().requires_grad_(True)
        log_q = F.log_softmax(logits.float(), dim=-1)
        kl = F.kl_div(log_q, full, log_target=True, reduction="none").sum(-1)
        nll = -log_q.gather(-1, targets[..., None]).squeeze(-1)
        return kl.mean() + nll.mean(), (logits, full, targets)

    rows = []
    for name, loss_of in (("fused (horizon_kl_nll)", fused), ("unfused formula", unfused)):
        saved_bytes(loss_of, device)  # warm-up
        kept, beyond, seconds = saved_bytes(loss_of, device)
        rows.append(
            {
                "formula": name,
                "rows": batch * length,
                "vocab": vocab,
                "kept_mib": kept / 2**20,
                "beyond_inputs_mib": beyond / 2**20,
                "ms": seconds * 1000,
            }
        )
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
