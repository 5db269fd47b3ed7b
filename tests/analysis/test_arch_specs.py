"""Architecture arithmetic against the published counts."""
import pytest

from mlcvlab.analysis import (ALEXNET_INPUT, IMAGENET_INPUT, FC, Conv, InceptionConfig, Pool,
                              alexnet, analyze, conv_out, inception_naive, inception_reduced,
                              resnet, totals, vgg19)


def by_name(rows):
    return {r.name: r for r in rows}


def test_alexnet_grouped_and_ungrouped_totals():
    grouped = analyze(alexnet(grouped=True), ALEXNET_INPUT)
    single = analyze(alexnet(grouped=False), ALEXNET_INPUT)
    # 60,965,224 with the two-GPU grouping (conv2, conv4, conv5 within a GPU); 62,378,344 without
    assert totals(grouped)["params"] == 60_965_224
    assert totals(single)["params"] == 62_378_344
    assert totals(grouped)["biases"] == totals(single)["biases"] == 10_568
    g, s = by_name(grouped), by_name(single)
    assert g["conv1"].out_shape == (96, 55, 55) and g["pool5"].out_shape == (256, 6, 6)
    assert g["conv2"].weights == 5 * 5 * 48 * 256 and s["conv2"].weights == 5 * 5 * 96 * 256
    assert g["conv3"].weights == s["conv3"].weights == 3 * 3 * 256 * 384   # conv3 crosses GPUs
    assert g["fc6"].weights == 9216 * 4096


def test_vgg19_weights_without_biases_and_activations():
    rows = analyze(vgg19(), IMAGENET_INPUT)
    t = totals(rows)
    assert t["weights"] == 143_652_544
    assert t["params"] == 143_667_240
    r = by_name(rows)
    assert r["conv1_1"].out_shape == (64, 224, 224) and r["conv1_1"].activations == 3_211_264
    assert r["conv1_1"].weights == 1_728
    assert r["pool5"].out_shape == (512, 7, 7)
    assert sum(1 for x in rows if x.kind.startswith("conv")) == 16


@pytest.mark.parametrize("depth,params", [(18, 11_689_512), (50, 25_557_032), (152, 60_192_808)])
def test_resnet_parameter_counts_match_torchvision(depth, params):
    rows = analyze(resnet(depth), IMAGENET_INPUT)
    assert totals(rows)["params"] == params
    assert rows[-1].out_shape == (1000,)


def test_resnet18_multiply_adds():
    assert totals(analyze(resnet(18), IMAGENET_INPUT))["macs"] == 1_814_073_344   # ~1.8 GMACs


def test_inception_naive_vs_reduced_for_32x32x256():
    naive = analyze(inception_naive(256), (256, 32, 32))
    reduced = analyze(inception_reduced(256), (256, 32, 32))
    assert naive[-1].out_shape == (64 + 128 + 32 + 256, 32, 32)
    assert reduced[-1].out_shape == (64 + 128 + 32 + 32, 32, 32)
    hw = 32 * 32
    assert totals(naive)["macs"] == hw * 256 * (64 + 128 * 9 + 32 * 25) == 528_482_304
    assert totals(reduced)["macs"] == hw * (256 * (64 + 96 + 16 + 32) + 96 * 9 * 128 + 16 * 25 * 32)
    assert totals(reduced)["macs"] == 180_879_360


def test_inception_config_changes_counts():
    cfg = InceptionConfig(n1x1=128, n3x3=192, n5x5=96)
    rows = analyze(inception_naive(256, cfg), (256, 28, 28))
    assert rows[-1].out_shape == (128 + 192 + 96 + 256, 28, 28)   # the CS231n 28x28x672 example
    assert totals(rows)["macs"] == 28 * 28 * 256 * (128 + 192 * 9 + 96 * 25)


def test_shape_mismatch_errors_name_the_layer():
    with pytest.raises(ValueError, match="c2"):
        analyze([Conv(3, 8, 3, name="c1"), Conv(4, 8, 3, name="c2")], (3, 16, 16))
    with pytest.raises(ValueError, match="fc"):
        analyze([Pool(2), FC(10, 2, name="fc")], (3, 16, 16))
    with pytest.raises(ValueError, match="does not fit"):
        conv_out(2, 5, 1, 0)
    with pytest.raises(ValueError, match="depth"):
        resnet(19)
