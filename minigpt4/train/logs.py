"""What people watching a run see: JSONL log, TensorBoard events, a loss/lr PNG, a summary."""
from __future__ import annotations

import io
import json
from pathlib import Path

from minigpt4.utils import atomic_write_bytes, atomic_write_json, atomic_write_text


class RunLog:
    def __init__(self, out: Path, resume_step: int = 0, tensorboard: bool = True):
        self.out = out
        self.path = out / "log.jsonl"
        out.mkdir(parents=True, exist_ok=True)
        if self.path.exists():  # a resumed run redoes the steps after its checkpoint: drop their lines
            kept = [l for l in self.path.read_text().splitlines() if l.strip() and json.loads(l)["step"] <= resume_step]
            atomic_write_text(self.path, "".join(l + "\n" for l in kept))
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)

    def log(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"train/{k}", v, record["step"])
            self.tb.flush()

    def records(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(l) for l in self.path.read_text().splitlines() if l.strip()]

    def plot(self) -> Path | None:
        """loss.png next to the checkpoints: loss (left axis) and learning rate (right axis)."""
        recs = [r for r in self.records() if "loss" in r]
        if not recs:
            return None
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        steps = [r["step"] for r in recs]
        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        ax.plot(steps, [r["loss"] for r in recs], color="tab:blue", label="loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss", color="tab:blue")
        ax2 = ax.twinx()
        ax2.plot(steps, [r["lr"] for r in recs], color="tab:orange", label="lr")
        ax2.set_ylabel("learning rate", color="tab:orange")
        ax.set_title(f"training: {self.out.name}")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        path = self.out / "loss.png"
        atomic_write_bytes(path, buf.getvalue())
        return path

    def summary(self, summary: dict) -> None:
        atomic_write_json(self.out / "summary.json", summary)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def format_summary(s: dict) -> str:
    head = "stopped (time is up; run it again to continue)" if s.get("stopped") == "time" else "done"
    lines = [f"{head}: {s['steps']} steps, {s['samples']} samples in {s['time_s']:.1f} s "
             f"({s['samples_per_s']:.1f} samples/s), final loss {s['final_loss']:.4f}",
             f"checkpoint: {s['checkpoint']}"]
    if s["skipped"]:
        shown = ", ".join(f"{x['key']} ({x['reason']})" for x in s["skipped_examples"][:5])
        lines.append(f"skipped {s['skipped']} bad sample(s): {shown}{' ...' if s['skipped'] > 5 else ''}")
    return "\n".join(lines)
