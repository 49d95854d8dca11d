"""The one interface every detector implements, and what a scan hands it.

A detector is a small object with a ``name``, whether it ``needs_clean_data``, an ``applicable`` check that gives
the reason in words when it cannot judge a model, and ``detect``, which returns a :class:`~schemas.report.Finding`
with its evidence and diagnostics. Orchestration (:mod:`worker.engine.scan`) runs every requested, applicable
detector through this interface; detectors that find a trigger append it to ``context.triggers`` so that later
detectors (attributions, activation statistics) and the repair can use it.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from schemas.report import Finding
from worker.engine.canonical import CanonicalModel
from worker.engine.data import Dataset
from worker.engine.detect.trigger import ReversedTrigger
from worker.engine.preprocess import Preprocessing, to_images


@dataclass
class DetectionContext:
    """What a scan knows when it runs its detectors."""

    model: CanonicalModel
    preprocessing: Preprocessing
    #: Clean labelled samples (raw values, the model's layout), or None for a data-free scan.
    clean: Dataset | None
    device: torch.device
    #: Where evidence files go, named ``<detector>-<what>.png``; the scan lists every file there as an artifact.
    out_dir: Path
    seed: int = 0
    #: Triggers found so far, in the order the detectors ran.
    triggers: list[ReversedTrigger] = field(default_factory=list)

    def clean_images(self) -> np.ndarray:
        """The clean samples as N x H x W x C raw pixels (what triggers and patterns are defined on)."""
        if self.clean is None:
            raise ValueError("this scan has no clean data")
        return to_images(self.clean.x, self.model.signature)


class Detector(Protocol):
    """One detection method behind the scan's single interface."""

    #: The name users pass in ``detectors`` (a member of :class:`schemas.scan.DetectorName`).
    name: str
    #: True when it cannot run without clean data.
    needs_clean_data: bool

    def applicable(self, context: DetectionContext) -> str | None:
        """None when this detector can judge the model in ``context``, else why not, in words."""

    def detect(self, context: DetectionContext) -> Finding:
        """Judge the model; raise :class:`~worker.core.errors.InputError` only for bad input."""
