"""How a scan's report reads on a terminal, and the exit code CI gates on; shared by the local scan and the client.

Exit codes: 0 clean, 1 backdoored, 3 inconclusive, 2 a crashed detector or stage (and, in the commands, a refused
or bad input).
"""

from pathlib import Path

from schemas.report import ScanReport, Verdict

EXIT_BY_VERDICT = {Verdict.clean: 0, Verdict.backdoored: 1, Verdict.inconclusive: 3}


def exit_code(report: ScanReport) -> int:
    """The CI gate's answer: a crashed detector or stage is an error (2), never "inconclusive"."""
    return 2 if report.errors else EXIT_BY_VERDICT[report.verdict]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def describe_report(report: ScanReport, out: Path | None) -> str:
    head = f"verdict: {report.verdict.value}"
    if report.score is not None:
        head += f" (probability {report.score:.3f}" + ("" if report.threshold is None else
                                                      f", threshold {report.threshold:.2f}") + ")"
    if report.suspected_targets:
        head += f"; suspected target class {', '.join(map(str, report.suspected_targets))}"
    lines = [head]
    if report.explanation:
        lines.append(f"  why: {report.explanation}")
    for f in report.findings:
        if not f.applicable:
            state = "not applicable"
        elif f.score is None:
            state = "ran (evidence only)"
        elif f.threshold is None:
            state = f"score {f.score:.3f}"
        else:
            state = f"score {f.score:.3f} / threshold {f.threshold:.3f}"
        lines.append(f"  {f.detector:<8} {state}: {f.reason}")
    for e in report.errors:
        lines.append(f"  error in {e.stage}: {e.message}")
    if report.repair is not None:
        r = report.repair
        lines += ["", f"repair: pruning {r.layer} ({r.criterion} order); decision data {r.split.decision_samples}, "
                      f"evaluation {r.split.evaluation_samples} ({r.split.evaluation_source})",
                  f"  baseline: clean accuracy {_pct(r.baseline.clean_accuracy)}, "
                  f"attack success {_pct(r.baseline.attack_success_rate)}, "
                  f"estimated (reversed trigger) {_pct(r.baseline.estimated_attack_success_rate)}",
                  f"  {'repair':<16} {'pruned':>7} {'clean acc':>10} {'attack':>8} {'estimate':>9}   artifact"]
        for m in r.models:
            if m.warning and m.shares_repair_with is None:
                lines.append(f"  {m.name:<16} not offered: {m.warning}")
                continue
            mark = "  <- recommended" if m.recommended else ""
            lines.append(f"  {m.name:<16} {m.channels_pruned if m.channels_pruned is not None else '-':>7} "
                         f"{_pct(m.clean_accuracy):>10} {_pct(m.attack_success_rate):>8} "
                         f"{_pct(m.estimated_attack_success_rate):>9}   {m.artifact} ({m.method}){mark}")
        if r.nothing_worked:
            lines.append("  NOTHING WORKED: use neither a repaired model nor a GoodNet from this scan.")
        if r.recommendation:
            lines.append(f"  {r.recommendation}")
        lines += [f"  warning: {w}" for w in r.warnings]
    if report.goodnets:
        lines += ["", f"  {'goodnet':<16} {'clean acc':>10} {'false alarm':>12} {'detection':>10} {'estimate':>9}"]
        for g in report.goodnets:
            mark = "  <- recommended" if g.recommended else ""
            lines.append(f"  {g.name:<16} {_pct(g.clean_accuracy):>10} {_pct(g.false_alarm_rate):>12} "
                         f"{_pct(g.detection_rate):>10} {_pct(g.estimated_detection_rate):>9}   {g.artifact} "
                         f"(rule {g.rule}){mark}")
    if out is not None:
        lines += ["", f"artifacts in {out}: " + ", ".join(a.name for a in report.artifacts)]
    return "\n".join(lines)
