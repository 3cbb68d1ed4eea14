"""Training logs: logs/metrics.csv, TensorBoard events, and a tqdm progress bar (rank 0 only).

A stage that resumes from step N first cuts its logs back to N (rows and events logged after the
checkpoint it resumes from would otherwise appear twice), so the logs read as one uninterrupted run."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from shared.io.atomic_files import atomic_write_text

from tqdm import tqdm


class MetricsLog:
    def __init__(self, log_dir: Path, stage: str, start_step: int, max_steps: int, enabled: bool = True):
        self.enabled, self.stage = enabled, stage
        self.csv_path = log_dir / "metrics.csv"
        self.writer = None
        self.bar = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            log_dir.mkdir(parents=True, exist_ok=True)
            self._cut_back(start_step)
            self.writer = SummaryWriter(str(log_dir / "tensorboard" / stage), purge_step=start_step + 1 if start_step else None)
            self.bar = tqdm(total=max_steps, initial=start_step, desc=stage, dynamic_ncols=True, disable=None)

    def _header(self) -> list[str]:
        if not self.csv_path.exists():
            return []
        with self.csv_path.open(newline="") as f:
            return next(csv.reader(f), [])

    def _cut_back(self, step: int) -> None:
        """Drop this stage's rows after ``step``, and rows a killed write left incomplete."""
        if not self.csv_path.exists():
            return
        with self.csv_path.open(newline="") as f:
            reader = csv.DictReader(f)
            header, rows = reader.fieldnames or [], list(reader)
        kept = [row for row in rows if self._keep(row, step)]
        if len(kept) < len(rows):
            text = io.StringIO()
            writer = csv.DictWriter(text, header, restval="")
            writer.writeheader()
            writer.writerows(kept)
            atomic_write_text(self.csv_path, text.getvalue())

    def _keep(self, row: dict, step: int) -> bool:
        if None in row.values() or None in row:  # a row a killed write cut short
            return False
        if row.get("stage") != self.stage:
            return True
        return (row.get("step") or "").isdigit() and int(row["step"]) <= step

    def _write_row(self, row: dict):
        header = self._header()
        if set(row) - set(header):  # new columns (e.g. a later stage's): rewrite with the wider header
            rows = []
            if header:
                with self.csv_path.open(newline="") as f:
                    rows = list(csv.DictReader(f))
            header = header + [k for k in row if k not in header]
            with self.csv_path.open("w", newline="") as f:
                writer = csv.DictWriter(f, header, restval="")
                writer.writeheader()
                writer.writerows(rows)
        with self.csv_path.open("a", newline="") as f:
            csv.DictWriter(f, header, restval="").writerow(row)

    def log(self, step: int, values: dict[str, float]):
        if not self.enabled:
            return
        self._write_row({"stage": self.stage, "step": step, **{k: f"{v:.6g}" for k, v in values.items()}})
        for key, value in values.items():
            self.writer.add_scalar(f"{self.stage}/{key}", value, step)
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in values.items() if k in ("loss", "it_per_s")})

    def advance(self, steps: int = 1):
        if self.bar is not None:
            self.bar.update(steps)

    def close(self):
        if self.enabled:
            self.writer.close()
            self.bar.close()
