"""RaGAN running estimate, the VGG-19 loader, the discriminator, and metrics against scikit-image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from training.discriminator import PatchDiscriminator
from plugin_server.errors import VggWeightsError
from training.losses import RunningMean, ragan_d_loss, ragan_g_loss, weighted_mse
from training.metrics import changed, psnr, ssim
from training.pairs import read_image, to_float
from training.vgg import layer_table, load_vgg19_features
from train_fixtures import SHARED_DATA, needs_shared_data, vgg_file  # noqa: F401  (fixtures)


def test_running_mean_keeps_exactly_the_last_300() -> None:
    avg = RunningMean(300)
    assert avg.mean == 0.0
    pushed = torch.arange(1000, dtype=torch.float64)
    start = 0
    for size in (7, 1, 250, 120, 3, 299, 320):  # chunks smaller and larger than the window
        avg.push(pushed[start : start + size])
        start += size
        kept = pushed[max(0, start - 300) : start]
        assert torch.equal(avg.last(), kept)
        assert avg.mean == pytest.approx(float(kept.mean()), abs=1e-12)
    restored = RunningMean(1)
    restored.load_state_dict(avg.state_dict())
    assert torch.equal(restored.last(), avg.last())


def test_ragan_losses_reward_the_right_side() -> None:
    real, fake = torch.full((2, 1, 4, 4), 3.0), torch.full((2, 1, 4, 4), -3.0)
    assert ragan_d_loss(real, fake, 3.0, -3.0) < ragan_d_loss(fake, real, -3.0, 3.0)
    assert ragan_g_loss(fake, real, -3.0, 3.0) < ragan_g_loss(real, fake, 3.0, -3.0)


def test_keep_weight_makes_an_unwanted_edit_cost_more_than_a_missed_one() -> None:
    before = torch.rand(2, 3, 8, 8)
    target = before.clone()
    target[0, 1, 2, 3] += 0.25  # the retoucher changed one pixel (in one channel)
    missed = before.clone()  # output: left the wanted edit undone
    unwanted = target.clone()
    unwanted[1, :, 5, 5] += 0.25  # output: did the edit, and also touched an untouched pixel
    n = before.numel()
    assert torch.isclose(weighted_mse(missed, before, target), F.mse_loss(missed, target))
    assert torch.isclose(weighted_mse(missed, before, target, 4.0), torch.tensor(0.25**2 / n))
    assert torch.isclose(weighted_mse(unwanted, before, target, 4.0), torch.tensor(4 * 3 * 0.25**2 / n))
    # A changed pixel's other channels count as changed: the pixel is the unit, not the channel.
    also_channel = target.clone()
    also_channel[0, 0, 2, 3] += 0.5
    assert torch.isclose(weighted_mse(also_channel, before, target, 4.0), torch.tensor(0.5**2 / n))


def test_edit_weight_makes_the_colour_of_a_missed_edit_cost_more_and_only_past_two_levels() -> None:
    before = torch.full((1, 3, 4, 4), 0.5)
    target = before.clone()
    target[0, :, 1, 1] += torch.tensor([0.1, -0.1, 0.0])  # a colour edit (de-reddening): grey mean unchanged
    target[0, :, 2, 2] += 0.2  # a lightness edit (a dark spot lifted): the same change in every channel
    target[0, 2, 3, 0] += 1 / 255  # moved by one level: below EDIT_LEVEL, weighs 1
    missed = before.clone()
    n = before.numel()
    colour, grey, faint = 2 * 0.1**2, 3 * 0.2**2, (1 / 255) ** 2
    assert torch.isclose(weighted_mse(missed, before, target), F.mse_loss(missed, target))
    assert torch.isclose(weighted_mse(missed, before, target, edit_weight=5.0), torch.tensor((5 * colour + grey + faint) / n))
    # An untouched pixel edited by mistake weighs keep_weight, whatever edit_weight is.
    unwanted = target.clone()
    unwanted[0, 1, 0, 3] += 0.1
    assert torch.isclose(weighted_mse(unwanted, before, target, keep_weight=3.0, edit_weight=5.0),
                         torch.tensor(3 * 0.1**2 / n))


def test_patch_discriminator_is_fully_convolutional() -> None:
    d = PatchDiscriminator(channels=8, layers=3)
    assert d(torch.rand(2, 3, 64, 64)).shape == (2, 1, 8, 8)
    assert d(torch.rand(1, 3, 150, 97)).shape[:2] == (1, 1)


def test_vgg_layer_names_follow_torchvision_indices() -> None:
    table = layer_table()
    assert table["conv1_1"][0] == 0 and table["conv5_2"][0] == 30 and table["relu5_2"][0] == 31
    convs = [name for name in table if name.startswith("conv")]
    assert len(convs) == 16 and convs[13] == "conv5_2"  # the 14th weight layer


def test_vgg_weights_load_and_produce_features(vgg_file) -> None:
    features = load_vgg19_features(vgg_file, "conv5_2")
    state = torch.load(vgg_file, weights_only=True)
    assert torch.equal(features.features[30].weight, state["features.30.weight"])
    out = features(torch.rand(1, 3, 32, 32))
    assert out.shape == (1, 512, 2, 2)
    assert not any(p.requires_grad for p in features.parameters())


def test_missing_or_wrong_vgg_file_is_a_clear_error(tmp_path, vgg_file) -> None:
    with pytest.raises(VggWeightsError, match="does not exist.*--vgg-weights.*--beta 0"):
        load_vgg19_features(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(VggWeightsError, match="could not be read"):
        load_vgg19_features(tmp_path / "junk.pth")
    state = torch.load(vgg_file, weights_only=True)
    vgg16_like = {k: v for k, v in state.items() if k not in ("features.34.weight", "features.34.bias")}
    torch.save(vgg16_like, tmp_path / "vgg16.pth")
    with pytest.raises(VggWeightsError, match=r"not VGG-19.*features\.34\.weight.*missing"):
        load_vgg19_features(tmp_path / "vgg16.pth")
    with pytest.raises(VggWeightsError, match="unknown VGG-19 layer"):
        load_vgg19_features(vgg_file, "conv6_1")


@needs_shared_data
@pytest.mark.parametrize(
    "first, second",
    [
        ("ffhqr-pair/00000-original.png", "ffhqr-pair/00000-retouched.png"),
        ("portraits/ffhq-00001.png", "portraits/ffhq-00002.png"),
    ],
)
def test_psnr_and_ssim_agree_with_scikit_image(first: str, second: str) -> None:
    a, b = to_float(read_image(SHARED_DATA / first)), to_float(read_image(SHARED_DATA / second))
    ta, tb = torch.from_numpy(a).permute(2, 0, 1), torch.from_numpy(b).permute(2, 0, 1)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    expected_psnr = peak_signal_noise_ratio(b64, a64, data_range=1.0)
    expected_ssim = structural_similarity(
        a64, b64, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=-1
    )
    assert psnr(ta, tb) == pytest.approx(expected_psnr, abs=1e-3)
    assert ssim(ta, tb) == pytest.approx(expected_ssim, abs=1e-3)
    mask = changed(ta, tb).numpy()
    expected_masked = 10 * np.log10(1 / np.mean((a64[mask] - b64[mask]) ** 2))
    assert psnr(ta, tb, mask=changed(ta, tb)) == pytest.approx(expected_masked, abs=1e-3)
