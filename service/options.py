"""The ``options`` of an upload: parsed strictly, checked against the files sent, and messages in API terms.

- An unknown key is a 422 naming it and the nearest known key (``options.preprocesing``: did you mean
  ``preprocessing``?), since an ignored typo would run the scan with defaults the user did not want.
- Work that cannot run is refused, not dropped: a repair or a GoodNet asked for without the ``clean_data``
  file is a 422. Left at their defaults, repair and GoodNet are simply off without clean data, and the
  record (and ``GET /v1/scans/{id}``) shows the options as they take effect.
- The engine's messages are written for the CLI (``--clean-data``) and about the files it reads (stored by
  their sha256); :func:`api_message` turns them into the API's words: field names and the user's file names.
"""

import difflib
import re

from pydantic import BaseModel, ValidationError

from schemas.api import ScanCreate
from worker.core.errors import OptionError

#: CLI flags as the API names the same thing.
FLAG_FIELDS = {
    "--architecture": "'architecture'", "--clean-data": "'clean_data'", "--eval-data": "'eval_data'",
    "--poisoned-data": "'poisoned_data'",
    "--divide-by": "options.preprocessing.divide_by", "--mean": "options.preprocessing.mean",
    "--std": "options.preprocessing.std", "--bgr": "options.preprocessing.bgr", "--layer": "options.repair.layer",
    "--criterion": "options.repair.criterion", "--thresholds": "options.repair.thresholds",
    "--fine-tune-epochs": "options.repair.fine_tune_epochs", "--fine-tune-lr": "options.repair.fine_tune_learning_rate",
    "--fine-tune": "options.repair.fine_tune", "--holdout": "options.repair.holdout_fraction",
    "--no-goodnet": "options.goodnet = false", "--seed": "options.repair.seed", "--detectors": "options.detectors",
}
_FLAG = re.compile("|".join(re.escape(flag) for flag in sorted(FLAG_FIELDS, key=len, reverse=True)) + r"(?![\w-])")
_BLOB = re.compile(r"(?:\S*/)?blobs/[0-9a-f]{2}/([0-9a-f]{64})|\b([0-9a-f]{64})\b")


def parse_options(raw: bytes | bytearray | None) -> ScanCreate:
    """The ``options`` field as :class:`ScanCreate`; an OptionError naming the API field otherwise."""
    if raw is None or not raw.strip():
        return ScanCreate()
    try:
        return ScanCreate.model_validate_json(bytes(raw))
    except ValidationError as exc:
        raise OptionError(describe_error(exc, ScanCreate)) from None


def describe_error(exc: ValidationError, model: type[BaseModel]) -> str:
    first = exc.errors()[0]
    where = ".".join(["options", *map(str, first["loc"])])
    if first["type"] == "extra_forbidden":
        known = _fields_at(model, first["loc"][:-1])
        nearest = difflib.get_close_matches(str(first["loc"][-1]), known, n=1, cutoff=0.6)
        hint = f"; did you mean {nearest[0]!r}?" if nearest else "."
        return f"unknown option {where}{hint} The known keys there are: {', '.join(known)}."
    if first["type"] == "json_invalid":
        return f"options is not valid JSON: {first['msg']}."
    return f"invalid option {where}: {first['msg']}."


def _fields_at(model: type[BaseModel], path: tuple) -> list[str]:
    for part in path:
        annotation = model.model_fields[str(part)].annotation if str(part) in model.model_fields else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def effective_options(options: ScanCreate, files: set[str]) -> ScanCreate:
    """The options as the scan will run with the files sent; refuses requested work that cannot run."""
    if "clean_data" in files:
        return options
    asked = []
    if "repair" in options.model_fields_set and options.repair.enabled:
        given = sorted(options.repair.model_fields_set - {"enabled"}) or ["enabled"]
        asked.append(f"a repair (options.repair.{', options.repair.'.join(given)})")
    if "goodnet" in options.model_fields_set and options.goodnet:
        asked.append("a GoodNet (options.goodnet)")
    if asked:
        raise OptionError(f"{' and '.join(asked)} asked for, but no 'clean_data' file was sent: repair needs clean "
                          "labelled samples. Send clean_data, or leave these options out for detection only.")
    for field in ("eval_data", "poisoned_data"):
        if field in files:
            raise OptionError(f"the '{field}' file was sent without a 'clean_data' file: it only serves to measure "
                              "a repair, and repair needs clean_data.")
    return options.model_copy(update={"repair": options.repair.model_copy(update={"enabled": False}),
                                      "goodnet": False})


def api_message(message: str, uploads: list[dict]) -> str:
    """An engine message in API terms: CLI flags as API fields, stored blob paths as the user's file names."""
    names = {u["sha256"]: repr(u.get("filename") or u["field"]) for u in uploads}
    sent = {u["field"]: u.get("filename") for u in uploads}
    message = _BLOB.sub(lambda m: names.get(m.group(1) or m.group(2), m.group(0)), message)

    def field(match: re.Match) -> str:
        words = FLAG_FIELDS[match.group(0)]
        filename = sent.get(words.strip("'"))
        return f"{words} ({filename})" if filename else words

    return _FLAG.sub(field, message)

