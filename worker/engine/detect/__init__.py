"""Detectors, one module each, behind :class:`~worker.engine.detect.base.Detector`.

``DETECTORS`` is the registry the scan runs, in order: detectors that find triggers come first, so that those
which use ``context.triggers`` run after them.
"""

from worker.engine.detect.activation import LatentEntropyDetector, LinfBiasDetector
from worker.engine.detect.attribution import IntegratedGradientsDetector
from worker.engine.detect.base import DetectionContext, Detector
from worker.engine.detect.mmbd import MaxMarginDetector
from worker.engine.detect.reverse import ReverseEngineeringDetector
from worker.engine.detect.ulp import UlpDetector

DETECTORS: dict[str, Detector] = {detector.name: detector for detector in (
    ReverseEngineeringDetector(),  # finds triggers: first
    MaxMarginDetector(),  # data-free
    IntegratedGradientsDetector(), LinfBiasDetector(), LatentEntropyDetector(),  # read context.triggers
    UlpDetector(),
)}

__all__ = ["DETECTORS", "DetectionContext", "Detector"]
