"""The data-free detector: MM-BD's maximum achievable margin per class (see :mod:`.margins`).

It needs no clean data, so it is the one detector that judges a scan without any. Its assumption, stated in every
finding: a backdoor gives its target class a far larger maximum margin than any natural class reaches. That holds
for all-to-one attacks whose trigger the network learned as a strong feature; attacks that spread over every class
(all-to-all) or hide the target among naturally dominant classes may not show, so its silence is weak evidence.
"""

import math

import torch

from schemas.models import InputLayout
from schemas.report import Finding
from worker.engine.detect.base import DetectionContext
from worker.engine.detect.margins import MarginSearch, max_margins, outlier
from worker.engine.preprocess import image_shape_of, model_input

#: MM-BD flags a model when the order-statistic p-value falls below 0.05.
P_VALUE_LEVEL = 0.05
ASSUMPTION = ("MM-BD assumes a backdoor lets its target class reach a far larger margin than any natural class "
              "can; it needs no data, but attacks spread over all classes (all-to-all) may not show.")


class MaxMarginDetector:
    name = "mmbd"
    needs_clean_data = False

    def __init__(self, search: MarginSearch | None = None) -> None:
        self.search = search or MarginSearch()

    def applicable(self, context: DetectionContext) -> str | None:
        if context.model.signature.num_classes < 3:
            return "MM-BD compares each class's margin with the other classes'; it needs at least 3 classes."
        return None

    def detect(self, context: DetectionContext) -> Finding:
        model, signature = context.model, context.model.signature
        shape = image_shape_of(signature.input_shape, signature.input_layout)
        if signature.input_layout == InputLayout.flat:
            shape = (shape[0], 1, 1)  # a flat vector searched as a one-pixel-wide, one-channel image

        def logits(raw: torch.Tensor) -> torch.Tensor:
            return model.logits(model_input(raw, context.preprocessing, signature.input_layout))

        margins, diagnostics = max_margins(logits, tuple(shape), signature.num_classes, self.search,
                                           context.device, context.seed)
        found = outlier(margins)
        flagged = found.p_value < P_VALUE_LEVEL
        order = margins.argsort()[::-1][:5]
        p_words = f"{found.p_value:.1e}" if found.p_value < 1e-3 else f"{found.p_value:.3f}"
        reason = (f"Class {found.target} reaches a margin of {found.largest:.1f} from random inputs, against a median "
                  f"of {found.null_median:.1f} over the other {len(margins) - 1} classes (p = {p_words}; "
                  f"{'below' if flagged else 'not below'} {P_VALUE_LEVEL}). {ASSUMPTION}")
        evidence = {"log_anomaly": found.log_anomaly, "p_value": found.p_value,
                    "neg_log10_p": -math.log10(max(found.p_value, 1e-300)), "largest_margin": found.largest,
                    "median_margin": found.null_median,
                    "top_classes": [int(c) for c in order], "top_margins": [float(margins[c]) for c in order]}
        diagnostics = {**diagnostics, "classes": len(margins), "samples_used": 0}
        return Finding(detector=self.name, applicable=True, score=1.0 - found.p_value,
                       threshold=1.0 - P_VALUE_LEVEL, reason=reason, suspected_targets=[found.target],
                       evidence=evidence, diagnostics=diagnostics)
