"""The checks of a scan request that need the model but no training, run before any work.

The upload check (``bdscreen.validate``, while the POST waits) and a local ``bdscreen scan`` both run them, so
that input that cannot work is refused in seconds instead of failing minutes into a scan: the data files fit
the model (a few rows read, the sample count taken from the file's header), there are enough clean samples
for the split the repair will make, ``mean``/``std``/``bgr`` fit the model's channels, the repair layer
exists, and which requested detectors can judge the model. Messages use the CLI's flag names; the gateway
puts them in API words (``service.options.api_message``).
"""

from dataclasses import dataclass, field

import numpy as np
import torch

from schemas.scan import ScanOptions
from worker.core.errors import DataError, InputError, OptionError, refuse_inapplicable  # noqa: F401 - re-exported
from worker.engine.canonical import CanonicalModel
from worker.engine.data import read_dataset
from worker.engine.detect import DETECTORS, DetectionContext
from worker.engine.repair.pipeline import MIN_SAMPLES
from worker.engine.scan import ScanInputs, preprocessing_of

#: Rows read from each data file; enough to prove it fits the model.
CHECK_SAMPLES = 8
FLAGS = {"clean_data": "--clean-data", "eval_data": "--eval-data", "poisoned_data": "--poisoned-data"}


@dataclass
class Preflight:
    samples: dict[str, int] = field(default_factory=dict)  # per data file: samples in it
    #: Requested detectors that cannot judge this model, with the reason.
    not_applicable: dict[str, str] = field(default_factory=dict)


def preflight(model: CanonicalModel, inputs: ScanInputs, options: ScanOptions) -> Preflight:
    """Raise InputError for a request that cannot run; return what was learnt on the way."""
    result = Preflight()
    signature = model.signature
    if (inputs.eval_data or inputs.poisoned_data) and inputs.clean_data is None:
        raise OptionError("--eval-data or --poisoned-data given without --clean-data: they only measure a repair, "
                          "and repair needs clean data.")
    preprocessing = preprocessing_of(options)
    try:  # one zero sample of the model's own shape: mean/std/bgr against its channels
        preprocessing.apply(np.zeros((1, *signature.input_shape), np.float32), signature.input_layout)
    except OptionError as exc:
        raise OptionError(f"--mean/--std/--bgr do not fit the model: {exc.message} "
                          f"(the model takes {tuple(signature.input_shape)}, {signature.input_layout}).") from None
    for name, flag in FLAGS.items():
        path = getattr(inputs, name)
        if path is not None:
            try:
                result.samples[name] = read_dataset(path, signature, max_samples=CHECK_SAMPLES).total
            except InputError as exc:  # the same error (and category), saying which file
                exc.message = f"{flag}: {exc.message}"
                exc.args = (exc.message,)
                raise
    if inputs.clean_data is not None and options.repair.enabled:
        _check_split(result.samples, options)
        layer = options.repair.layer
        if layer is not None and layer not in {info.name for info in signature.layers}:
            raise OptionError(f"--layer: the model has no layer named {layer!r}; 'bdscreen inspect MODEL' lists "
                              "its layers.")
    context = DetectionContext(model=model, preprocessing=preprocessing, clean=None, device=torch.device("cpu"),
                               out_dir=inputs.model.parent, seed=options.repair.seed)
    for name in options.detectors:
        detector = DETECTORS[name]
        if detector.needs_clean_data and inputs.clean_data is None:
            result.not_applicable[name] = "it needs clean data (--clean-data), and none was given"
            continue
        why_not = detector.applicable(context)
        if why_not is not None:
            result.not_applicable[name] = why_not
    return result


def _check_split(samples: dict[str, int], options: ScanOptions) -> None:
    """The repair splits the clean data into a decision and a held-out part, each of at least MIN_SAMPLES; refuse
    now what ``pipeline.split`` would refuse after loading everything. (A decision part too small for a further
    validation split is repaired anyway, with a warning in the report.)"""
    total, holdout = samples["clean_data"], options.repair.holdout_fraction
    decision = total if "eval_data" in samples else total - int(round(holdout * total))
    parts = {"decision part": decision}
    if "eval_data" in samples:
        parts["--eval-data"] = samples["eval_data"]
    else:
        parts[f"held-out part ({holdout:.0%})"] = total - decision
    short = {part: n for part, n in parts.items() if n < MIN_SAMPLES}
    if short:
        described = ", ".join(f"{part} {n}" for part, n in short.items())
        raise DataError(f"--clean-data has {total} samples: too few for the repair, which needs at least "
                        f"{MIN_SAMPLES} in each part ({described}). Give more clean samples or a separate "
                        "--eval-data.")

