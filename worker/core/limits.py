"""Size limits checked before anything large is allocated.

A hostile file can declare a 10^12-element tensor in a few bytes, or a graph ten thousand layers
deep. Readers compare every declared size against these limits first and raise
:class:`~worker.core.errors.TooLargeError`, naming the limit, so a bad upload costs nothing.

Element limits say what a sane model holds; the memory budget (``BDSCREEN_MEMORY_BUDGET_MB``) says what
this process may spend on one step: the bytes of a decompressed tensor, a data file as read, the activations
of a batch. Each is estimated from declared sizes before the allocation and refused past the budget.
"""

from math import prod

from worker.core.errors import TooLargeError

FLOAT32_BYTES = 4
#: Elements of one weight tensor (a 1e9-element float32 tensor is 4 GB).
MAX_TENSOR_ELEMENTS = 256_000_000
#: Elements of all weights together.
MAX_MODEL_ELEMENTS = 512_000_000
#: Elements of one input sample (4096 x 4096 x 4).
MAX_INPUT_ELEMENTS = 64_000_000
#: Elements of one intermediate activation of one sample.
MAX_ACTIVATION_ELEMENTS = 256_000_000
#: Layers (Keras) or nodes (ONNX) in one graph; real CNN classifiers have well under a thousand.
MAX_GRAPH_NODES = 4_096
#: Bytes of a Keras model config (JSON).
MAX_CONFIG_BYTES = 16_000_000


def memory_budget() -> int:
    """Bytes one reading or computing step may allocate in this process (``BDSCREEN_MEMORY_BUDGET_MB``)."""
    from worker.core.settings import get_settings

    return int(get_settings().memory_budget_mb * 2**20)


def check_bytes(what: str, nbytes: int) -> int:
    """Return ``nbytes``, or raise if it is above the memory budget."""
    budget = memory_budget()
    if nbytes > budget:
        raise TooLargeError(
            f"{what} would need {nbytes / 2**20:,.0f} MiB, above this process's memory budget of "
            f"{budget / 2**20:,.0f} MiB (BDSCREEN_MEMORY_BUDGET_MB); refusing before allocating it."
        )
    return nbytes


def batch_within_budget(sample_bytes: int, wanted: int) -> int:
    """The largest batch up to ``wanted`` whose ``sample_bytes`` per sample fit the budget (at least 1)."""
    return max(1, min(wanted, memory_budget() // max(sample_bytes, 1)))


def limit_address_space(megabytes: float) -> bool:
    """Cap this process's address space (RLIMIT_AS) so a runaway allocation raises MemoryError; True if set.

    Not where a GPU is visible: CUDA reserves far more address space than it uses, and fails under a cap."""
    import glob
    import os
    import resource

    cuda_visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip() not in ("", "-1")
    if megabytes <= 0 or glob.glob("/dev/nvidia[0-9]*") or cuda_visible:
        return False
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = int(megabytes * 2**20)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    return True


def check_elements(what: str, shape: tuple[int, ...] | list[int], limit: int = MAX_TENSOR_ELEMENTS) -> int:
    """Return the number of elements of ``shape``, or raise if it is negative or above ``limit``."""
    dims = [int(d) for d in shape]
    if any(d < 0 for d in dims):
        raise TooLargeError(f"{what} declares a negative dimension {tuple(dims)}; the file is corrupt or hostile.")
    count = prod(dims)
    if count > limit:
        raise TooLargeError(
            f"{what} declares shape {tuple(dims)} = {count:,} elements, above bdscreen's limit of {limit:,}; "
            "refusing before allocating it."
        )
    check_bytes(what, count * FLOAT32_BYTES)  # whatever its stored type, bdscreen computes in float32
    return count


def check_node_count(what: str, count: int) -> None:
    """Raise if a graph has more nodes than :data:`MAX_GRAPH_NODES`."""
    if count > MAX_GRAPH_NODES:
        raise TooLargeError(
            f"{what} has {count:,} layers/nodes, above bdscreen's limit of {MAX_GRAPH_NODES:,}; "
            "refusing to build it."
        )
