"""The training record: ``metrics.csv`` in the results folder, one row per logged step.

Columns: ``step`` (optimizer steps done before this one), ``loss`` (the training loss of that
step, averaged over the whole global batch), ``lr`` (the learning rate the step used) and
``images_per_s`` (training images per second over all ranks since the previous row, time spent
on checkpoints and sample grids left out).
"""

import csv
import os
from pathlib import Path

METRICS_NAME = "metrics.csv"
FIELDS = ("step", "loss", "lr", "images_per_s")


def read_metrics(path):
    """The rows of a metrics.csv as dicts of floats (``step`` as int)."""
    with open(path, newline="") as f:
        return [{"step": int(row["step"]), **{k: float(row[k]) for k in FIELDS[1:]}}
                for row in csv.DictReader(f)]


class MetricsLog:
    """Appends rows to ``path``, flushed one by one so the file is current while training runs.

    A fresh run starts a new file. A run resumed at ``resume_step`` keeps the rows of the steps
    before it and drops the later ones, which the interrupted run logged after its last
    checkpoint and which the resumed run logs again.
    """

    def __init__(self, path, resume_step=None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if resume_step is not None and self.path.is_file():
            kept = [row for row in read_metrics(self.path) if row["step"] < resume_step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, FIELDS)
            writer.writeheader()
            writer.writerows(kept)
        os.replace(tmp, self.path)

    def write(self, step, loss, lr, images_per_s):
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([step, f"{loss:.6g}", f"{lr:.6g}", f"{images_per_s:.6g}"])
