"""The repair plot: clean accuracy and attack success against channels pruned, thresholds marked."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and workers
import matplotlib.pyplot as plt  # noqa: E402

from schemas.report import RepairReport  # noqa: E402


def plot_repair(report: RepairReport, path: Path, title: str) -> None:
    steps = [p.channels_pruned for p in report.curve]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.plot(steps, [p.clean_accuracy for p in report.curve], label="clean accuracy (evaluation)", color="tab:blue")
    ax.plot(steps, [p.decision_accuracy for p in report.curve], label="clean accuracy (decision data)",
            color="tab:blue", linestyle=":")
    if report.curve and report.curve[0].attack_success_rate is not None:
        ax.plot(steps, [p.attack_success_rate for p in report.curve], label="attack success", color="tab:red")
    marks: dict[int, list[str]] = {}
    for model in report.models:
        if model.reached and model.channels_pruned is not None:
            marks.setdefault(model.channels_pruned, []).append(f"-{model.threshold:g}")
    for step, labels in marks.items():  # thresholds reached at the same step share one mark
        ax.axvline(step, color="grey", linestyle="--", linewidth=0.8)
        ax.text(step, 1.02, f"{'/'.join(labels)} pts", ha="center", fontsize=8, transform=ax.get_xaxis_transform())
    ax.set_xlabel(f"channels of {report.layer} pruned ({report.criterion} order)")
    ax.set_ylabel("fraction")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=10, pad=18)
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
