"""The generator's declared receptive radius and stride, measured."""

import pytest
import torch

from conftest import make_edit_generator
from plugin_server.model import Generator, GeneratorConfig, Model

CONFIGS = [GeneratorConfig(), GeneratorConfig(full_channels=4, body_channels=8, blocks=2, kernel_size=5)]


def measured_extent(generator: Generator, y: int, x: int, size: int) -> tuple[int, int, int, int]:
    """Offsets of the farthest input pixels that influence output (y, x), from the gradient."""
    image = torch.rand(1, 3, size, size, requires_grad=True)
    generator(image)[0, :, y, x].sum().backward()
    rows, cols = (image.grad.abs().sum(1)[0] > 0).nonzero(as_tuple=True)
    return rows.min().item() - y, rows.max().item() - y, cols.min().item() - x, cols.max().item() - x


@pytest.mark.parametrize("config", CONFIGS, ids=["default", "small-k5"])
def test_receptive_radius_is_measured_exactly(config):
    generator = make_edit_generator(config=config)
    radius = generator.receptive_radius
    size = 4 * radius + 8
    reach = 0
    for y, x in [(size // 2, size // 2), (size // 2 + 1, size // 2 + 1)]:  # both stride phases
        top, bottom, left, right = measured_extent(generator, y, x, size)
        reach = max(reach, -top, bottom, -left, right)
    assert reach == radius


@pytest.mark.parametrize("config", CONFIGS, ids=["default", "small-k5"])
def test_total_stride_is_measured(config):
    """Shifting the input by the stride shifts the output; by less, it does not."""
    generator = make_edit_generator(config=config)
    stride, pad = generator.stride, generator.receptive_radius + 4
    image = torch.rand(1, 3, 48 + 2 * pad, 48 + 2 * pad)
    with torch.no_grad():
        base = generator.residual(image)
        for shift in range(1, stride + 1):
            moved = generator.residual(torch.roll(image, shifts=(shift, shift), dims=(2, 3)))
            inner = (slice(None), slice(None), slice(pad + shift, -pad), slice(pad + shift, -pad))
            back = torch.roll(moved, shifts=(-shift, -shift), dims=(2, 3))
            equivariant = torch.allclose(back[inner], base[inner], atol=1e-5)
            assert equivariant == (shift == stride), f"shift {shift}"


def test_output_has_input_size_for_odd_shapes(edit_generator):
    for h, w in [(1, 1), (3, 5), (17, 2)]:
        assert edit_generator(torch.rand(2, 3, h, w)).shape == (2, 3, h, w)


def test_default_generator_starts_near_identity():
    generator = Generator()
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert (generator(image) - image).abs().max() < 0.05


@pytest.mark.parametrize("bad", [dict(kernel_size=4), dict(blocks=-1), dict(body_channels=0)])
def test_invalid_config_is_refused(bad):
    with pytest.raises(ValueError):
        GeneratorConfig(**bad)


@pytest.mark.parametrize("config", CONFIGS + [GeneratorConfig(blocks=0)], ids=["default", "small-k5", "no-blocks"])
def test_parameter_count_is_known_before_building(config):
    assert config.parameter_count() == sum(p.numel() for p in Generator(config).parameters())


@pytest.mark.parametrize("bad", [dict(blocks=True), dict(full_channels=16.5), dict(kernel_size="3")])
def test_sizes_must_be_whole_numbers(bad):
    with pytest.raises(ValueError, match="whole number"):
        GeneratorConfig(**bad)


def test_the_model_describes_itself():
    generator = Generator()
    assert generator.stride == 2 and set(generator.precisions) <= {"fp32", "bf16", "fp16"}
    assert "fp32" in generator.precisions
    wide = Generator(GeneratorConfig(full_channels=32, body_channels=64))
    assert 0 < generator.activation_bytes_per_pixel(torch.float32) < wide.activation_bytes_per_pixel(torch.float32)


def test_residual_floor_is_served_not_built():
    """The floor is how a model is served (the engine applies it): not in the architecture."""
    with pytest.raises(TypeError):
        GeneratorConfig(residual_floor=0.02)
    torch.manual_seed(0)
    plain = make_edit_generator()
    model = Model(plain, residual_floor=0.02, scale=60.0)
    image = torch.rand(1, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(model.generator.residual(image), plain.residual(image))  # training sees the raw edit
    for bad in (dict(residual_floor=-0.01), dict(residual_floor=0.5), dict(scale=0.0), dict(scale=-3.0)):
        with pytest.raises(ValueError):
            Model(plain, **bad)
