"""RUN_DIR/metrics.jsonl: one strict-JSON record per line (geolm.core.io.json_safe), appended by rank 0 only.

Record kinds written by geolm.training: train (windowed loss, lr, grad norm, speed), skip (a non-finite or
failed step, with its reason), eval (val_loss, val_ppl, n targets; `pending` while a deferred evaluation waits,
`deferred` once it is done), stop, interrupt. A resumed run first drops the records past its checkpoint.
"""
import json
from pathlib import Path

from ..core.io import atomic_write, json_safe


class MetricsLog:
    """Append-only metrics.jsonl in run_dir; `active` False (ranks > 0) makes every write a no-op."""

    def __init__(self, run_dir, active=True):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.active = active

    def read(self):
        """Every record in the file (a line cut by a crash is skipped); [] without a file."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def truncate_after(self, step):
        """Keep only the records with step <= `step` (rewritten atomically) -> the kept records."""
        if not self.active or not self.path.exists():
            return []
        keep = [r for r in self.read() if r.get("step", 0) <= step]
        atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in keep))
        return keep

    def write(self, rec):
        """Append json_safe(rec) as one line -> the sanitised record."""
        rec = json_safe(rec)
        if self.active:
            with open(self.path, "a") as f:
                f.write(json.dumps(rec) + "\n")
        return rec
