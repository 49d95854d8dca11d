"""What bdscreen knows about a model: its signature and layers (the ``inspect`` report)."""

from enum import StrEnum

from pydantic import BaseModel, Field


class ModelFormat(StrEnum):
    """The on-disk format a model came in; a repaired model goes back out in the same one."""

    keras_h5 = "keras-h5"
    onnx = "onnx"


class InputLayout(StrEnum):
    """Axis order of one input batch as the source model takes it."""

    nhwc = "NHWC"
    nchw = "NCHW"
    flat = "NF"


class LayerInfo(BaseModel):
    """One layer (Keras) or node (ONNX) of the canonical graph."""

    name: str = Field(description="Name as in the source file.")
    kind: str = Field(description="Source layer class (Keras) or operator type (ONNX).")
    inputs: list[str] = Field(default_factory=list, description="Names of the layers feeding this one.")
    output_shape: list[int] = Field(description="Shape of one sample's output, in the source's layout.")
    channels: int | None = Field(default=None, description="Output channels or units of conv/dense/norm layers.")
    parameters: int = Field(default=0, description="Number of weight elements.")


class ModelSignature(BaseModel):
    """The contract of a classifier: what it takes and what it gives."""

    format: ModelFormat
    producer: str | None = Field(default=None, description="Keras version, or ONNX producer and opset.")
    input_name: str
    input_shape: list[int] = Field(description="Shape of one sample, in the source's layout (no batch axis).")
    input_layout: InputLayout
    num_classes: int
    output_activation: str | None = Field(
        default=None, description="'softmax' when the model ends in a softmax, else None (outputs are logits)."
    )
    layers: list[LayerInfo]

    @property
    def parameters(self) -> int:
        return sum(layer.parameters for layer in self.layers)


class InspectReport(BaseModel):
    """What ``bdscreen inspect`` prints: the signature, or why the file was refused."""

    path: str
    accepted: bool
    signature: ModelSignature | None = None
    refused_category: str | None = None
    refused_reason: str | None = None
