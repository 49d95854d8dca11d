"""Format readers and writers at the edges; everything in between works on :class:`CanonicalModel`.

Every reader has the same signature, ``(path, architecture=None) -> CanonicalModel``, decides nothing
from the file name, and never mutates its input file. This package's own import is light (no torch):
the gateway uses :mod:`worker.core.sniff` to refuse pickles before anything is queued.
"""

from pathlib import Path
from typing import TYPE_CHECKING

from schemas.models import ModelFormat
from worker.core.errors import InputError, OptionError, TooLargeError, UnreadableModelError
from worker.core.sniff import FileKind, sniff_model_file

if TYPE_CHECKING:
    from worker.engine.canonical import CanonicalModel


# What a reader can still raise on content its checks did not foresee (a value of the wrong type deep in a
# config, an HDF5 structure h5py cannot follow): the file is reported as unreadable, never with a traceback.
_MALFORMED_CONTENT = (TypeError, ValueError, KeyError, IndexError, ZeroDivisionError, OverflowError, AttributeError,
                      RecursionError, RuntimeError, OSError, UnicodeError)


def read_model(path: Path, architecture: Path | None = None) -> "CanonicalModel":
    """Read any supported model file (by content) into the canonical form, in eval mode.

    Raises an :class:`~worker.core.errors.InputError` for every file it does not read, whatever is wrong with it.
    """
    kind = sniff_model_file(path)
    try:
        return _read(kind, path, architecture)
    except InputError:
        raise
    except MemoryError:
        raise TooLargeError(f"{path.name}: reading it needed more memory than this process may use "
                            "(BDSCREEN_MEMORY_BUDGET_MB and the worker's address-space limit).") from None
    except _MALFORMED_CONTENT as exc:
        raise UnreadableModelError(f"{path.name} is malformed: reading it failed with {type(exc).__name__}: "
                                   f"{str(exc)[:200]}. Save the model again with its own library.") from None


def _read(kind: FileKind, path: Path, architecture: Path | None) -> "CanonicalModel":
    if kind == FileKind.hdf5:
        from worker.engine.formats.keras_h5 import read_keras_h5

        return read_keras_h5(path, architecture)
    if architecture is not None:
        raise OptionError(f"{path.name} is an ONNX file, which carries its own architecture; drop --architecture.")
    from worker.engine.formats.onnx_reader import read_onnx

    return read_onnx(path)


#: The file suffix each format is written with.
SUFFIX = {ModelFormat.keras_h5: ".h5", ModelFormat.onnx: ".onnx"}


def write_model(model: "CanonicalModel", format: ModelFormat, source: Path, dest: Path) -> Path:
    """Write ``model`` in ``format`` to ``dest`` (its suffix replaced by the format's); returns the path written.

    A Keras file is a copy of the ``source`` upload with only the changed weight tensors rewritten; an ONNX file
    is a fresh export of the canonical model (one file, dynamic batch axis).
    """
    dest = dest.with_suffix(SUFFIX[format])
    if format == ModelFormat.keras_h5:
        from worker.engine.formats.keras_h5 import write_keras_h5

        write_keras_h5(model, source, dest)
    else:
        from worker.engine.formats.onnx_export import export_onnx

        export_onnx(model, dest)
    return dest
