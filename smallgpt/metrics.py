"""
What a training run records: out_dir/metrics.jsonl, one JSON object per logged iteration ("kind": "iter") and
per evaluation ("kind": "eval"); out_dir/loss.png, drawn from them at evaluations (every 10 s at most) and at the
end; and, if asked, the evaluations in Weights & Biases.

    python -m smallgpt.metrics out/metrics.jsonl    # draw loss.png beside a metrics.jsonl, e.g. of a finished run

- MetricsLog: appends records to metrics.jsonl with the seconds since the run began; a resumed run continues
  the file of the run it resumes, and its clock.
- plot_losses: loss.png from the records; run_title: its title.
- pyplot, save_figure: matplotlib drawing to files, and a figure saved atomically (tune.py's plots too).
- format_duration: seconds as the log shows them (1h02m, 3m05s, 42s).
"""

import json
import os
import sys
import time

from smallgpt.errors import UserError, report_user_errors
from smallgpt.files import replaced_atomically

# loss.png is redrawn at an evaluation once this many seconds have passed since it last was (a drawing takes a tenth
# of a second or more, which runs that evaluate often, as tune.py's trials do, would spend again and again)
PLOT_SECONDS = 10


class MetricsLog:

    def __init__(self, out_dir, resumed_at, title, wandb_run=None):
        """
        Start out_dir/metrics.jsonl afresh or, for a run resumed at iteration resumed_at, keep its records from
        before then. title heads the plot; wandb_run, if given, is wandb.init's (project, name, config).
        """
        self.path, self.plot_path, self.title = (os.path.join(out_dir, "metrics.jsonl"),
                                                 os.path.join(out_dir, "loss.png"), title)
        self.records = read_metrics(self.path, before=resumed_at) if resumed_at is not None else []
        self.elapsed_before = self.records[-1]["elapsed"] if self.records else 0.0
        self.start = self.drawn_at = time.time()
        self.drawn = len(self.records)  # the records in loss.png
        with replaced_atomically(self.path, what="metrics") as [tmp], open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in self.records)
        self.file = open(self.path, "a", encoding="utf-8")
        self.wandb = None
        if wandb_run:
            try:
                import wandb
            except ImportError:
                raise UserError("wandb_log=True needs the wandb package: pip install wandb (or leave wandb_log off)")
            project, name, config = wandb_run
            self.wandb = wandb.init(project=project, name=name, config=config)

    def log(self, **record):
        """Append a record, less the fields that are None; an evaluation's also goes to wandb, and to the plot."""
        record = {key: value for key, value in record.items() if value is not None}
        record["elapsed"] = round(self.elapsed_before + time.time() - self.start, 3)
        self.records.append(record)
        try:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        except OSError as e:
            raise UserError(f"could not write {self.path}: {e.strerror}; the last checkpoint is as it was saved")
        if record["kind"] != "eval":
            return
        if time.time() - self.drawn_at >= PLOT_SECONDS:
            self.draw()
        if self.wandb:
            mfu = next((r["mfu"] for r in reversed(self.records) if r["kind"] == "iter"), 0.0)
            self.wandb.log({"iter": record["iter"], "train/loss": record["train_loss"], "val/loss": record["val_loss"],
                            "train/bpb": record["train_bpb"], "val/bpb": record["val_bpb"], "lr": record["lr"],
                            "mfu": mfu * 100, **({"hellaswag/acc_norm": record["hellaswag_acc_norm"]}
                                                 if "hellaswag_acc_norm" in record else {})})

    def draw(self):
        """loss.png from every record so far."""
        plot_losses(self.records, self.plot_path, self.title)
        self.drawn, self.drawn_at = len(self.records), time.time()

    def close(self):
        """The last records into loss.png too, and the files closed."""
        if len(self.records) > self.drawn:
            self.draw()
        self.file.close()
        if self.wandb:
            self.wandb.finish()


def read_metrics(path, before=None):
    """The records of a metrics.jsonl (none if it is missing), those from before iteration `before` if given."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a crash
                continue
    # records at or after a resumed checkpoint's iteration belong to a continuation that the resumed run replaces
    return [r for r in records if before is None or r["iter"] < before]


def pyplot():
    """matplotlib's pyplot, drawing to files: no display needed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path, title=None):
    """Write fig to path as a PNG, whole or not at all, with its title as the file's own if given; and close it."""
    with replaced_atomically(path, what="plot") as [tmp]:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Title": title} if title else None)
    pyplot().close(fig)


def plot_losses(records, path, title):
    """Draw path (a PNG): the loss of each logged batch, the evaluated train and val loss, the best val loss."""
    plt = pyplot()
    steps = [r for r in records if r["kind"] == "iter"]
    evals = [r for r in records if r["kind"] == "eval"]
    if not evals:
        return
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.plot([r["iter"] for r in steps], [r["train_loss"] for r in steps], color="tab:blue", alpha=0.3, lw=0.8,
            label="train loss (one batch)")
    ax.plot([r["iter"] for r in evals], [r["train_loss"] for r in evals], "o-", color="tab:blue", ms=3,
            label="train loss (estimated)")
    ax.plot([r["iter"] for r in evals], [r["val_loss"] for r in evals], "o-", color="tab:orange", ms=3,
            label="val loss (estimated)")
    best = min(evals, key=lambda r: r["val_loss"])
    ax.plot(best["iter"], best["val_loss"], "*", color="tab:red", ms=14,
            label=f"best val loss {best['val_loss']:.4f} at iter {best['iter']}")
    # the first evaluations sit near ln(vocab_size); keep the scale for the part of the run worth reading
    later = [r["val_loss"] for r in evals[1:]] + [r["train_loss"] for r in steps[len(steps) // 10:]]
    if later:
        ax.set_ylim(min(later + [best["val_loss"]]) * 0.97, max(later) * 1.05)
    if steps:  # an iteration record counts the tokens trained on up to and including it
        tokens_per_iter = steps[-1]["tokens"] / (steps[-1]["iter"] + 1)
        tokens = ax.secondary_xaxis("top", functions=(lambda i: i * tokens_per_iter / 1e6,
                                                      lambda t: t * 1e6 / tokens_per_iter))
        tokens.set_xlabel("tokens seen (millions)")
    if "val_bpb" in evals[-1]:  # bits per byte of val text are the val loss times a constant
        per_nat = evals[-1]["val_bpb"] / evals[-1]["val_loss"]
        ax.secondary_yaxis("right", functions=(lambda loss: loss * per_nat, lambda bpb: bpb / per_nat)).set_ylabel(
            "val bits per byte")
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy loss")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, title)


def run_title(dataset, model):
    """loss.png's title: the data, and the model's shape (a checkpoint's or GPT-2's, not the settings')."""
    shape = f"{model.config.n_layer} layers x {model.config.n_embd}" if model.config.n_layer else "the bigram"
    return f"{dataset}: {shape}, {model.get_num_params() / 1e6:.2f}M parameters"


def format_duration(seconds):
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


if __name__ == "__main__":
    report_user_errors()
    if len(sys.argv) != 2 or not os.path.isfile(sys.argv[1]):
        sys.exit("usage: python -m smallgpt.metrics out/metrics.jsonl")
    plot_losses(read_metrics(sys.argv[1]), os.path.join(os.path.dirname(sys.argv[1]), "loss.png"), sys.argv[1])
