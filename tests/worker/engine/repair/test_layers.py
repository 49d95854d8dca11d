import pytest

from worker.core.errors import OptionError
from worker.engine.repair.layers import conv_layers, default_prune_layer, resolve_prune_layer


def test_default_layer_of_deepid_is_conv3_whose_output_feeds_both_branches(deepid):
    assert conv_layers(deepid) == ["conv_1", "conv_2", "conv_3", "conv_4"]
    assert default_prune_layer(deepid) == "conv_3"


def test_default_layer_of_a_chain_is_its_last_conv(mnist_model):
    assert default_prune_layer(mnist_model) == "conv2d_2"


def test_unknown_layer_names_the_conv_layers(deepid):
    with pytest.raises(OptionError, match="'conv_9' is not a convolutional layer.*conv_1, conv_2, conv_3, conv_4"):
        resolve_prune_layer(deepid, "conv_9")


def test_dense_layer_cannot_be_pruned_as_conv(deepid):
    with pytest.raises(OptionError, match="fc_1"):
        resolve_prune_layer(deepid, "fc_1")
