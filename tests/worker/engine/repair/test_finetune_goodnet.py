import numpy as np
import onnxruntime as ort
import torch

from worker.engine.repair.finetune import fine_tune
from worker.engine.repair.goodnet import GoodNet, evaluate_goodnet, export_goodnet_onnx, goodnet_labels
from worker.engine.repair.layers import pruned_copy
from worker.engine.repair.sweep import EvalSet, accuracy


def test_fine_tuning_keeps_pruned_channels_at_zero_and_leaves_the_input_model(mnist_model, mnist_set):
    pruned_channels = [0, 5, 9]
    pruned = pruned_copy(mnist_model, "conv2d_1", pruned_channels)
    before = {k: v.clone() for k, v in pruned.state_dict().items()}
    train, validation = EvalSet(mnist_set.x[:400], mnist_set.y[:400]), EvalSet(mnist_set.x[400:600],
                                                                             mnist_set.y[400:600])
    result = fine_tune(pruned, "conv2d_1", pruned_channels, train, validation, epochs=3)
    conv = result.model.layer("conv2d_1")
    assert torch.count_nonzero(conv.weight[pruned_channels]) == 0
    assert torch.count_nonzero(conv.bias[pruned_channels]) == 0
    assert torch.count_nonzero(conv.weight[[1, 2]]) > 0
    assert all(torch.equal(before[k], v) for k, v in pruned.state_dict().items())
    assert len(result.validation_accuracy) == 3  # the whole schedule ran
    history = result.validation_accuracy
    assert result.best_epoch >= 1 and history[result.best_epoch - 1] == max(history)
    assert accuracy(result.model, validation) == result.validation_accuracy[result.best_epoch - 1]
    # never the untouched pruned model
    assert not torch.equal(result.model.layer("conv2d_1").weight, pruned.layer("conv2d_1").weight)
    assert not result.model.training


def test_goodnet_answers_class_n_exactly_where_the_models_disagree(mnist_model, mnist_set):
    repaired = pruned_copy(mnist_model, "conv2d_2", [0, 1])
    x = mnist_set.x[:500]
    goodnet = GoodNet(mnist_model, repaired)
    labels = goodnet_labels(goodnet, x)
    with torch.no_grad():
        a, b = mnist_model(x).argmax(1).numpy(), repaired(x).argmax(1).numpy()
    assert (a != b).any(), "the repaired model must disagree somewhere for this test to mean anything"
    assert np.array_equal(labels, np.where(a == b, a, 10))
    metrics = evaluate_goodnet(goodnet, x, mnist_set.y[:500])
    assert metrics.false_alarm_rate == float((a != b).mean())
    assert metrics.attack_success_rate is None and metrics.detection_rate is None


def test_goodnet_onnx_holds_both_networks_and_matches_in_process(mnist_model, mnist_set, tmp_path):
    goodnet = GoodNet(mnist_model, pruned_copy(mnist_model, "conv2d_2", [0, 1]))
    path = tmp_path / "goodnet.onnx"
    export_goodnet_onnx(goodnet, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = mnist_set.x[:300]
    scores, labels = session.run(None, {"input": x.numpy()})
    assert scores.shape == (300, 11)
    assert np.array_equal(labels, goodnet_labels(goodnet, x))
    assert np.array_equal(scores.argmax(1), labels)


def test_random_shift_moves_images_along_their_spatial_axes_only():
    from schemas.models import InputLayout
    from worker.engine.repair.finetune import random_shift

    x = torch.arange(2 * 4 * 5 * 3, dtype=torch.float32).reshape(2, 4, 5, 3)
    generator = torch.Generator().manual_seed(0)
    shifted = random_shift(x, InputLayout.nhwc, 2, generator)
    dy, dx = (int(v) for v in torch.randint(-2, 3, (2,), generator=torch.Generator().manual_seed(0)))
    assert (dy, dx) != (0, 0)
    rows = slice(max(0, dy), 4 + min(0, dy))
    cols = slice(max(0, dx), 5 + min(0, dx))
    source = x[:, max(0, -dy):4 - max(0, dy), max(0, -dx):5 - max(0, dx)]
    assert torch.equal(shifted[:, rows, cols], source)
    assert shifted.sum() < x.sum()  # the uncovered border is zero
    nchw = random_shift(x.permute(0, 3, 1, 2), InputLayout.nchw, 2, torch.Generator().manual_seed(0))
    assert torch.equal(nchw, shifted.permute(0, 3, 1, 2))
    assert torch.equal(random_shift(x.flatten(1), InputLayout.flat, 2, generator), x.flatten(1))
