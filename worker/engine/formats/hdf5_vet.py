"""Open an uploaded HDF5 file and walk its structure once, before any dataset is read.

The walk refuses what a hostile file can hide in HDF5's structure: links and datasets stored in other files
(they could read files of the server), cycles of hard links (every later walk would loop), and datasets whose
decompressed size is past the memory budget (a gzip-compressed dataset of zeros, or one that declares only a
fill value, is a few bytes on disk and gigabytes in memory).
"""

from math import prod
from pathlib import Path

import h5py

from worker.core.errors import RefusedModelError, UnreadableModelError
from worker.core.limits import FLOAT32_BYTES, check_bytes


def open_hdf5(path: Path, what: str) -> h5py.File:
    """``path`` opened read-only, after its structure passed the walk; ``what`` names it in errors."""
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise UnreadableModelError(f"{what}: not a readable HDF5 file ({exc}); it may be truncated or corrupt.") \
            from None
    try:
        _vet_structure(h5, what)
    except BaseException:
        h5.close()
        raise
    return h5


def _vet_structure(h5: h5py.File, what: str) -> None:
    """Walk every object once; refuse external storage, cycles and datasets past the memory budget."""
    bad: list[str] = []
    weight_bytes = 0
    stack: list[h5py.Group] = [h5]
    seen = {_object_key(h5)}
    while stack:
        group = stack.pop()
        for key in group:
            link = group.get(key, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                bad.append(f"external link '{group.name}/{key}' -> {link.filename}")
                continue
            if isinstance(link, h5py.SoftLink):
                continue  # a soft link names a path that the walk reaches on its own, or nothing
            item = group[key]
            if isinstance(item, h5py.Group):
                if _object_key(item) in seen:
                    # Hard links can make a group its own descendant: every walk over it would loop forever.
                    raise UnreadableModelError(f"{what}: group '{group.name}/{key}' links back to a group that "
                                               "contains it (a cycle); Keras never writes one.")
                seen.add(_object_key(item))
                stack.append(item)
            elif isinstance(item, h5py.Dataset) and (item.external or item.is_virtual):
                bad.append(f"dataset '{item.name}' stored outside the file")
            elif isinstance(item, h5py.Dataset):
                weight_bytes += _dataset_bytes(item, what)
    check_bytes(f"{what}: its datasets, read as float32", weight_bytes)
    if bad:
        raise RefusedModelError(f"{what}: refers to data outside the upload ({'; '.join(bad[:3])}); "
                                "save the model as one self-contained file.")


def _dataset_bytes(dataset: h5py.Dataset, what: str) -> int:
    """Bytes reading ``dataset`` needs (as stored, plus a float32 copy); refused past the budget."""
    itemsize = dataset.dtype.itemsize
    if dataset.chunks is not None:
        check_bytes(f"{what}: a compression chunk of dataset '{dataset.name}'", prod(dataset.chunks) * itemsize)
    return check_bytes(f"{what}: dataset '{dataset.name}'", dataset.size * (itemsize + FLOAT32_BYTES))


def _object_key(obj: h5py.HLObject) -> tuple[int, ...]:
    """The same for every link to one HDF5 object (its file number and object address)."""
    info = h5py.h5g.get_objinfo(obj.id)
    return (*info.fileno, *info.objno)


