"""The screening engine: one scan, from files to a report and artifacts, in-process.

The Celery task, the local CLI scan and the tests all call :func:`run_scan`. It orchestrates the
algorithm modules and nothing else: detectors judge the model, the repair pipeline
(:mod:`worker.engine.repair.pipeline`) prunes, fine-tunes and builds GoodNets, and every file it makes is
listed in the report with its size and sha256. A detector that crashes is recorded in
``report.errors`` (the scan exits 2) and the scan goes on; bad input raises :class:`~worker.core.errors.InputError`.
"""

import hashlib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from schemas.report import Artifact, Finding, ScanReport, StageError
from schemas.scan import DetectorName, ScanOptions
from worker.core.errors import InputError, OptionError
from worker.engine.canonical import default_device
from worker.engine.data import read_dataset
from worker.engine.detect import DETECTORS, DetectionContext
from worker.engine.detect.verdict import judge
from worker.engine.formats import read_model
from worker.engine.preprocess import Preprocessing
from worker.engine.stages import ProgressFn, ScanInputs, Stages

MEDIA_TYPES = {".json": "application/json", ".png": "image/png", ".onnx": "application/onnx",
               ".h5": "application/x-hdf5"}


def bdscreen_version() -> str:
    try:
        return version("bdscreen")
    except PackageNotFoundError:
        return "0+unknown"


def preprocessing_of(options: ScanOptions) -> Preprocessing:
    return Preprocessing.of(options.preprocessing)


def run_scan(inputs: ScanInputs, options: ScanOptions, out_dir: Path, progress: ProgressFn | None = None,
             device: torch.device | None = None, strict_detectors: bool = False) -> ScanReport:
    """Screen, repair and wrap one model; writes artifacts and ``report.json`` into ``out_dir``.

    With ``strict_detectors`` (the user named the detectors) a named detector that cannot judge the model is
    an OptionError before any work, rather than a not-applicable finding."""
    from worker.engine.preflight import preflight, refuse_inapplicable

    out_dir.mkdir(parents=True, exist_ok=True)
    device = device or default_device()
    stages = Stages(progress)
    with stages.stage("load", 0.0):
        model = read_model(inputs.model, inputs.architecture).to(device)
        checked = preflight(model, inputs, options)
        if strict_detectors:
            refuse_inapplicable(checked.not_applicable)
    preprocessing = preprocessing_of(options)
    clean = None
    if inputs.clean_data is not None:
        clean = read_dataset(inputs.clean_data, model.signature)
    context = DetectionContext(model=model, preprocessing=preprocessing, clean=clean, device=device,
                               out_dir=out_dir, seed=options.repair.seed)
    with stages.stage("detect", 0.05):
        findings, errors = run_detectors(options.detectors, context)
    judgement = judge(findings)
    report = ScanReport(bdscreen_version=bdscreen_version(), model=model.signature, verdict=judgement.verdict,
                        score=judgement.score, threshold=judgement.threshold,
                        suspected_targets=judgement.suspected_targets, explanation=judgement.explanation,
                        findings=findings, errors=errors, device=str(device))
    if inputs.clean_data is not None and options.repair.enabled:
        from worker.engine.repair.pipeline import run_repair

        report.repair, report.goodnets = run_repair(model, inputs, options, preprocessing, out_dir, stages,
                                                    triggers=context.triggers,
                                                    detector_ran="reverse" in options.detectors)
    elif inputs.poisoned_data is not None or inputs.eval_data is not None:
        raise OptionError("poisoned or evaluation data were given without clean data; repair needs clean data "
                          "(--clean-data), and poisoned data only serves to report attack success after repair.")
    report.timings = stages.timings
    report.artifacts = list_artifacts(out_dir)
    (out_dir / "report.json").write_text(report.model_dump_json(indent=2))
    stages.progress("done", 1.0)
    return report


def run_detectors(names: list[DetectorName], context: DetectionContext) -> tuple[list[Finding], list[StageError]]:
    """Every requested detector, in the registry's order: a finding each, and the crashes apart from them."""
    findings: list[Finding] = []
    errors: list[StageError] = []
    for name, detector in DETECTORS.items():
        if name not in names:
            continue
        if detector.needs_clean_data and context.clean is None:
            findings.append(Finding(detector=name, applicable=False,
                                    reason="this detector needs clean data, and the scan has none."))
            continue
        try:
            why_not = detector.applicable(context)
            findings.append(detector.detect(context) if why_not is None
                            else Finding(detector=name, applicable=False, reason=why_not))
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - a detector's crash is recorded as an error, the scan goes on
            errors.append(StageError(stage=f"detect:{name}", message=f"{type(exc).__name__}: {exc}"))
    return findings, errors


def list_artifacts(out_dir: Path) -> list[Artifact]:
    """Every file the scan wrote except the report itself, with size and sha256."""
    artifacts = []
    for path in sorted(out_dir.iterdir()):
        if path.is_file() and path.name != "report.json":
            artifacts.append(Artifact(name=path.name, bytes=path.stat().st_size, sha256=sha256_file(path),
                                      media_type=MEDIA_TYPES.get(path.suffix, "application/octet-stream")))
    return artifacts


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
