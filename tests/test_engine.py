"""The tiled engine: exact against whole-image inference, bounded, cancellable, with clear errors."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_edit_generator
from plugin_server.engine import retouch
from plugin_server.errors import BadImageError, BadOptionError, CancelledError, OutOfMemoryError
from plugin_server.model import Generator, GeneratorConfig

SMALL = GeneratorConfig(full_channels=4, body_channels=8, blocks=2)
DTYPES = {np.uint8: 255, np.uint16: 65535, np.float32: 1.0}


def random_image(rng, h, w, c, dtype):
    values = rng.random((h, w, c), dtype=np.float32)
    return values if dtype is np.float32 else (values * DTYPES[dtype]).round().astype(dtype)


def max_difference(a, b):
    return np.abs(a.astype(np.float64) - b.astype(np.float64)).max()


def lsb(dtype):
    # One 16-bit level, also for float32 outputs (the same arithmetic, unrounded).
    return 1.0 if dtype in (np.uint8, np.uint16) else 1.0 / 65535


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    h=st.integers(1, 150), w=st.integers(1, 150), c=st.sampled_from([1, 3, 4]),
    dtype=st.sampled_from(list(DTYPES)), tile=st.integers(1, 160), seed=st.integers(0, 2**16),
)
def test_tiled_equals_whole_image(h, w, c, dtype, tile, seed):
    generator = make_edit_generator(seed=seed % 4, config=SMALL)
    image = random_image(np.random.default_rng(seed), h, w, c, dtype)
    whole = retouch(image, generator, tile_size=0)
    tiled = retouch(image, generator, tile_size=tile)
    assert tiled.shape == image.shape and tiled.dtype == image.dtype
    assert max_difference(tiled, whole) <= lsb(dtype)


AWKWARD = [(s, t) for s in [(1, 1), (3, 5), (4097, 3)] for t in (1, 16, 64, 100, 512)]
AWKWARD += [((1001, 757), t) for t in (64, 100, 512)]  # tiny tiles over a megapixel add nothing


@pytest.mark.parametrize("shape, tile", AWKWARD)
def test_awkward_shapes_16_bit_default_model(shape, tile, edit_generator):
    image = random_image(np.random.default_rng(1), *shape, 3, np.uint16)
    whole = retouch(image, edit_generator, tile_size=0)
    assert max_difference(retouch(image, edit_generator, tile_size=tile), whole) <= 1
    assert max_difference(whole, image) > 100  # the model really edits: the check is not vacuous


def test_auto_tile_on_a_real_photo_equals_whole_image(portrait_crop, edit_generator):
    whole = retouch(portrait_crop, edit_generator, tile_size=0)
    assert max_difference(retouch(portrait_crop, edit_generator), whole) <= 1


def test_strength_zero_is_identity_and_strength_scales_the_edit(portrait_crop, edit_generator):
    image = portrait_crop.astype(np.uint16) * 257
    assert np.array_equal(retouch(image, edit_generator, strength=0.0), image)
    out = retouch(image, edit_generator, strength=1.0)
    full = out.astype(np.int64) - image
    half = retouch(image, edit_generator, strength=0.5).astype(np.int64) - image
    unclipped = (out > 0) & (out < 65535)
    assert unclipped.mean() > 0.5 and np.abs(full).mean() > 100
    assert np.abs(half[unclipped] - full[unclipped] / 2).max() <= 1


def test_alpha_passes_through_and_gray_stays_gray(edit_generator):
    rng = np.random.default_rng(2)
    rgba = random_image(rng, 70, 90, 4, np.uint8)
    out = retouch(rgba, edit_generator, tile_size=32)
    assert np.array_equal(out[..., 3], rgba[..., 3])
    assert not np.array_equal(out[..., :3], rgba[..., :3])
    gray = random_image(rng, 70, 90, 1, np.uint16)
    out = retouch(gray, edit_generator, tile_size=32)
    assert out.shape == gray.shape and not np.array_equal(out, gray)


def test_input_array_is_never_modified(portrait_crop, edit_generator):
    before = portrait_crop.copy()
    retouch(portrait_crop, edit_generator, tile_size=64)
    assert np.array_equal(portrait_crop, before)


def test_progress_rises_to_one_and_cancel_stops_between_tiles(edit_generator):
    image = random_image(np.random.default_rng(3), 200, 200, 3, np.uint8)
    seen = []
    retouch(image, edit_generator, tile_size=50, progress=seen.append)
    assert len(seen) == 16 and seen == sorted(seen) and seen[-1] == pytest.approx(1.0)
    calls = []

    def cancel_after_three():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(CancelledError):
        retouch(image, edit_generator, tile_size=50, progress=seen.append, cancel=cancel_after_three)
    assert len(calls) == 4


class OutOfMemoryAbove(Generator):
    """Raises CUDA's out-of-memory error for windows wider than ``limit`` (injected from tests)."""

    limit = 1 << 30
    failures = 0

    def residual(self, x):
        if x.shape[-1] * x.shape[-2] > self.limit:
            type(self).failures += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return super().residual(x)


def test_out_of_memory_halves_the_tile_and_output_is_identical(edit_generator):
    generator = OutOfMemoryAbove(edit_generator.config)
    generator.load_state_dict(edit_generator.state_dict())
    image = random_image(np.random.default_rng(4), 300, 260, 3, np.uint16)
    whole = retouch(image, edit_generator, tile_size=0)
    OutOfMemoryAbove.limit = (64 + 60) ** 2  # fits a 64-pixel core with its margins, not 256
    out = retouch(image, generator, tile_size=256)
    assert OutOfMemoryAbove.failures >= 2  # it really failed at 256 and 128 before succeeding
    assert max_difference(out, whole) <= 1
    OutOfMemoryAbove.limit = 10
    with pytest.raises(OutOfMemoryError, match="smallest tile"):
        retouch(image, generator, tile_size=64)


def test_bf16_on_cpu_runs_close_to_fp32(portrait_crop, edit_generator):
    fp32 = retouch(portrait_crop, edit_generator, precision="fp32")
    bf16 = retouch(portrait_crop, edit_generator, precision="bf16")
    assert max_difference(fp32, bf16) <= 8


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(strength=-0.1), BadOptionError, "between 0 and 2"),
        (dict(strength=2.5), BadOptionError, "between 0 and 2"),
        (dict(strength=float("nan")), BadOptionError, "between 0 and 2"),
        (dict(precision="fp8"), BadOptionError, "unknown precision"),
        (dict(device="tpu"), BadOptionError, "device"),
        (dict(device="cuda:7"), BadOptionError, "CUDA"),
        (dict(tile_size=-4), BadOptionError, "tile size"),
    ],
)
def test_bad_options_are_clear(kwargs, error, words, edit_generator):
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(error, match=words):
        retouch(image, edit_generator, **kwargs)


@pytest.mark.parametrize(
    "image, words",
    [
        (np.zeros((8, 8), np.uint8), "H x W x C"),
        (np.zeros((8, 8, 2), np.uint8), "C = 1, 3 or 4"),
        (np.zeros((0, 8, 3), np.uint8), "empty"),
        (np.zeros((8, 8, 3), np.int32), "uint8, uint16 or float32"),
        ([[0]], "numpy array"),
    ],
)
def test_bad_images_are_clear(image, words, edit_generator):
    with pytest.raises(BadImageError, match=words):
        retouch(image, edit_generator)
