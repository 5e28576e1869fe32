"""What a training loop reports: metrics.jsonl (optionally mirrored to TensorBoard), throughput
over the steps since the last log line, the progress bar and, without a bar, one log line per
logged step."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ehr_ssl.atomic import atomic_write_text
from ehr_ssl.layout import METRICS_FILE, TENSORBOARD_DIR
from ehr_ssl.training import distributed

log = logging.getLogger("ehr_ssl")


class MetricsLog:
    """metrics.jsonl (one JSON object per logged step), optionally mirrored to TensorBoard."""

    def __init__(self, run_dir: Path, *, resume_step: int, tensorboard: bool):
        self.path = run_dir / METRICS_FILE
        self.last: dict = {}
        if self.path.exists():
            # Keep what led to the checkpoint being resumed; drop what a killed run wrote after
            # it, and a half-written last line.
            kept = []
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if record["step"] <= resume_step:
                    kept.append(record)
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
            self.last = kept[-1] if kept else {}
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops the points a killed run logged after the checkpoint.
            self.writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=resume_step + 1)

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        self.last = record
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, float) and key != "elapsed_s":
                    self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class ThroughputWindow:
    """Throughput figures over the steps since the last log line. Visit tokens are the real
    tokens of the batch (data throughput); encoder tokens and slots are what the encoder ran on
    (both views, padding included in slots)."""

    def __init__(self) -> None:
        self.tokens = self.encoder_tokens = self.encoder_slots = 0
        self.data_s = self.step_s = 0.0

    def add(
        self,
        attention_mask: torch.Tensor,
        encoder_tokens: torch.Tensor,
        encoder_slots: torch.Tensor,
        data_s: float,
        step_s: float,
    ) -> None:
        self.tokens += int(attention_mask.sum())
        self.encoder_tokens += int(encoder_tokens)
        self.encoder_slots += int(encoder_slots)
        self.data_s += data_s
        self.step_s += step_s

    def flush(self) -> dict:
        """The window's figures, token counts summed over processes; resets the window."""
        seconds = max(self.step_s, 1e-9)
        tokens, encoder_tokens, encoder_slots = distributed.sum_over_ranks(
            [self.tokens, self.encoder_tokens, self.encoder_slots]
        )
        figures = {
            "tokens_per_s": tokens / seconds,
            "encoder_tokens_per_s": encoder_tokens / seconds,
            "padding_fraction": 1 - encoder_tokens / max(encoder_slots, 1),
            "data_s": self.data_s,
            "compute_s": self.step_s - self.data_s,
        }
        self.__init__()
        return figures


class StepReporter:
    """The loop's outputs: the progress bar and throughput window after every step, and at each
    logged step a metrics record (metrics.jsonl on rank 0; a log line where no bar shows)."""

    def __init__(
        self, metrics: MetricsLog | None, *, step: int, total_steps: int, show_bar: bool, desc: str
    ):
        """`metrics` is rank 0's MetricsLog (None on the other processes); `step` the first."""
        self.metrics, self.total_steps = metrics, total_steps
        self.progress = tqdm(total=total_steps, initial=step, disable=not show_bar, desc=desc)
        self.started, self.window = time.perf_counter(), ThroughputWindow()
        # A resumed run that had already finished keeps its final figures.
        self.last: dict = metrics.last if metrics is not None else {}

    def add(
        self,
        attention_mask: torch.Tensor,
        encoder_counts: tuple[torch.Tensor, torch.Tensor],
        data_s: float,
        step_s: float,
    ) -> None:
        """One step's tokens (real ones; the encoder's real tokens and slots) and timings."""
        self.window.add(attention_mask, *encoder_counts, data_s, step_s)
        self.progress.update(1)

    def log(
        self,
        step: int,
        epoch: int,
        lr: float,
        losses: dict[str, torch.Tensor],
        grad_norm: torch.Tensor,
    ) -> None:
        """Record a logged step. Every process calls it: losses and token counts are averaged
        and summed over processes."""
        self.last = {
            "step": step,
            "epoch": epoch,
            "lr": lr,
            **{k: float(v) for k, v in distributed.mean_over_ranks(losses).items()},
            "grad_norm": float(grad_norm),
            **self.window.flush(),
            "elapsed_s": round(time.perf_counter() - self.started, 2),
        }
        if self.metrics is not None:
            self.metrics.write(self.last)
        self.progress.set_postfix(
            loss=f"{self.last['loss']:.3f}", tok_s=f"{self.last['tokens_per_s']:.0f}"
        )
        if self.progress.disable:
            log.info(
                "step %d/%d loss %.4f lr %.2e %.0f tokens/s padding %.2f",
                step,
                self.total_steps,
                self.last["loss"],
                lr,
                self.last["tokens_per_s"],
                self.last["padding_fraction"],
            )

    def close(self) -> None:
        self.progress.close()
        if self.metrics is not None:
            self.metrics.close()
