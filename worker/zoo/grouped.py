"""K stacked copies of a plain CNN run as one network: grouped convolutions, K*C-channel BatchNorm, batched matmuls.

``vmap`` over ``functional_call`` runs any module batched, but on CPU its BatchNorm rule left tensors in a layout
that made the following layers 2 to 4 times slower than training the models one by one. For the built-in
families (an ``nn.Sequential`` of convolutions, BatchNorm, ReLU, pooling, a flatten and dense layers) the same
computation is written out here with every tensor contiguous: model k's C channels are channels k*C..(k+1)*C-1
of one N x K*C x H x W batch, which per-channel layers (BatchNorm, ReLU, pooling) treat exactly as K separate
models, and a convolution with ``groups=K`` keeps the models apart.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_IMAGE_LAYERS = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Tanh, nn.MaxPool2d, nn.AvgPool2d)
_VECTOR_LAYERS = (nn.Linear, nn.ReLU, nn.Tanh)


def groupable(module: nn.Module) -> bool:
    """True for an ``nn.Sequential``: image layers, one flatten, then dense layers (what the families build)."""
    if not isinstance(module, nn.Sequential):
        return False
    layers = list(module)
    flattens = [i for i, layer in enumerate(layers) if isinstance(layer, nn.Flatten)]
    if len(flattens) != 1 or layers[flattens[0]].start_dim != 1:
        return False
    image, vector = layers[:flattens[0]], layers[flattens[0] + 1:]
    return (all(isinstance(layer, _IMAGE_LAYERS) for layer in image)
            and all(isinstance(layer, _VECTOR_LAYERS) for layer in vector)
            and all(layer.groups == 1 and layer.padding_mode == "zeros" for layer in image
                    if isinstance(layer, nn.Conv2d))
            and all(layer.affine and layer.track_running_stats and layer.momentum is not None for layer in image
                    if isinstance(layer, nn.BatchNorm2d)))


def grouped_forward(base: nn.Sequential, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor) -> Tensor:
    """Training-mode logits K x N x classes of the K stacked models (``params``/``buffers`` from
    ``stack_module_state``) on their inputs ``x`` (K x N x C x H x W). BatchNorm statistics update in place."""
    models, batch = x.shape[:2]
    h = x.transpose(0, 1).reshape(batch, models * x.shape[2], *x.shape[3:])
    for name, layer in base.named_children():
        if isinstance(layer, nn.Conv2d):
            weight, bias = params[f"{name}.weight"], params.get(f"{name}.bias")
            h = F.conv2d(h, weight.reshape(-1, *weight.shape[2:]), None if bias is None else bias.reshape(-1),
                         layer.stride, layer.padding, layer.dilation, groups=models)
        elif isinstance(layer, nn.BatchNorm2d):
            # Views of the stacked buffers: batch_norm's in-place update of the running statistics lands there.
            h = F.batch_norm(h, buffers[f"{name}.running_mean"].view(-1), buffers[f"{name}.running_var"].view(-1),
                             params[f"{name}.weight"].reshape(-1), params[f"{name}.bias"].reshape(-1), True,
                             layer.momentum, layer.eps)
            with torch.no_grad():
                buffers[f"{name}.num_batches_tracked"].add_(1)  # as BatchNorm2d does in training mode
        elif isinstance(layer, nn.Flatten):
            h = h.reshape(batch, models, -1).transpose(0, 1)
        elif isinstance(layer, nn.Linear):
            h = torch.baddbmm(params[f"{name}.bias"].unsqueeze(1), h, params[f"{name}.weight"].transpose(1, 2))
        else:  # ReLU, tanh and pooling act per channel
            h = layer(h)
    return h
