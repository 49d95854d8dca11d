"""Recognise a Python pickle stream from its bytes, as ``pickle.load`` would run it, without running it.

What matters is not whether a stream is a well-formed pickle but whether loading it would call anything
before it fails: ``pickle.load`` executes opcodes one by one, so a stream that imports and calls a function
and then holds an unknown opcode, or is cut short, still runs the call. The decoder here follows the
unpickler's stack (``pickletools`` gives each opcode's stack effect) up to the first opcode the unpickler
would reject, and reports a pickle when the bytes start with a protocol header or reach an importing or
calling opcode with the operands it needs. Nothing is imported or called: ``pickletools.genops`` only decodes.
"""

import io
import pickle
import pickletools
import warnings

# Opcodes by which a pickle imports a callable: REDUCE, BUILD, OBJ... can only call what was imported, and the
# EXT opcodes only name entries of copyreg's extension registry, which is empty unless a program fills it.
IMPORTING_OPCODES = frozenset({"GLOBAL", "STACK_GLOBAL", "INST"})

# A protocol 0/1 stream without a call is data; random text and binary rarely decode this far.
_MIN_HEADERLESS_OPCODES = 16
_MIN_FINISHED_OPCODES = 4
_MARK = pickletools.markobject
# Decoding a STRING argument of arbitrary bytes makes pickletools warn about escape sequences; it is data here.
warnings.filterwarnings("ignore", category=DeprecationWarning, module="pickletools")
_SLICE = pickletools.stackslice


def is_pickle_bytes(prefix: bytes) -> str | None:
    """Describe ``prefix`` as "a Python pickle (protocol N)" when loading it would run as a pickle, else None."""
    protocol = pickle_protocol(prefix)
    return None if protocol is None else f"a Python pickle (protocol {protocol})"


def pickle_protocol(prefix: bytes) -> int | None:
    """The protocol of the pickle stream that ``prefix`` starts (it may be cut short or broken), or None.

    A stream is a pickle when it starts with a PROTO header (protocols 0 to 5), when the unpickler would reach
    an importing or calling opcode with its operands on the stack (whatever comes after, an unknown opcode
    included), or, for header-less data pickles, when it decodes as many opcodes or finishes after a few.
    ONNX and HDF5 files fail at their first byte; NumPy's magic byte is STACK_GLOBAL on an empty stack.
    """
    names, highest, declared = _run_opcodes(prefix)
    if declared is not None:
        return declared
    if IMPORTING_OPCODES.intersection(names):
        return max(highest, 0)
    if highest > 1 and names[:1] != ["FRAME"]:
        return None
    finished = "STOP" in names and len(names) >= _MIN_FINISHED_OPCODES
    return highest if finished or len(names) >= _MIN_HEADERLESS_OPCODES else None


def _run_opcodes(prefix: bytes) -> tuple[list[str], int, int | None]:
    """Opcode names the unpickler would execute, their highest protocol, and the PROTO header's protocol."""
    stream = io.BytesIO(prefix)
    names: list[str] = []
    highest, declared = 0, None
    depth = 0
    marks: list[int] = []
    try:
        for opcode, argument, _position in pickletools.genops(stream):
            if not names and opcode.name == "PROTO":
                protocol = int(argument)  # type: ignore[arg-type]  # PROTO always carries an int
                if not 0 <= protocol <= pickle.HIGHEST_PROTOCOL:
                    break  # the unpickler refuses an unknown protocol before anything else
                declared = protocol
            if opcode.name in ("GLOBAL", "INST") and not _is_import_argument(argument):
                break  # the unpickler fails to import it
            after = _stack_after(opcode, depth, marks)
            if after is None:
                break  # stack underflow: the unpickler fails here, before this opcode acts
            depth = after
            names.append(opcode.name)
            highest = max(highest, opcode.proto)
            if opcode.name == "STOP":
                break
    except ValueError:
        pass  # an unknown opcode or the end of the prefix: what ran before it counts
    return names, highest, declared


def _stack_after(opcode: pickletools.OpcodeInfo, depth: int, marks: list[int]) -> int | None:
    before = opcode.stack_before
    if _MARK in before:
        if not marks:
            return None
        below = before.index(_MARK)
        depth = marks.pop()
    else:
        below = len([item for item in before if item is not _SLICE])
    if depth < below:
        return None
    depth -= below
    after = opcode.stack_after
    if _MARK in after:
        marks.append(depth)
        return depth
    return depth + len(after)


def _is_import_argument(argument: object) -> bool:
    """True for genops' "module name" argument of GLOBAL/INST when both parts are dotted identifiers."""
    parts = str(argument).split(" ")
    return len(parts) == 2 and all(part and all(p.isidentifier() for p in part.split(".")) for part in parts)
