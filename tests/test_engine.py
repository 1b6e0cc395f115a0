"""The tiled engine: exact against whole-image inference, bounded, cancellable, with clear errors."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_edit_generator
from plugin_server import engine
from plugin_server.errors import BadImageError, BadOptionError, CancelledError, OutOfMemoryError
from plugin_server.model import Generator, GeneratorConfig, Model
from plugin_server.wire import RetouchOptions

SMALL = GeneratorConfig(full_channels=4, body_channels=8, blocks=2)
DTYPES = {np.uint8: 255, np.uint16: 65535, np.float32: 1.0}


def retouch(image, model, progress=None, cancel=None, **options):
    """The engine with options as keywords; a bare generator is served as it is (no floor)."""
    model = model if isinstance(model, Model) else Model(model)
    return engine.retouch(image, model, RetouchOptions(**options), progress=progress, cancel=cancel)


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
    "kwargs, words",
    [
        (dict(strength=-0.1), "from 0 to 2"),
        (dict(strength=2.5), "from 0 to 2"),
        (dict(strength=float("nan")), "from 0 to 2"),
        (dict(strength=True), "from 0 to 2"),
        (dict(precision="fp8"), "unknown precision"),
        (dict(device="tpu"), "device"),
        (dict(device="cuda:7"), "CUDA"),  # a valid name, refused by the engine on this machine
        (dict(tile_size=-4), "tile size"),
        (dict(tile_size=True), "tile size"),
        (dict(tile_size=16.5), "tile size"),
    ],
)
def test_bad_options_are_clear(kwargs, words, edit_generator):
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(BadOptionError, match=words):
        retouch(image, edit_generator, **kwargs)


class Fp32Only(Generator):
    precisions = ("fp32",)


def test_a_precision_the_model_does_not_declare_is_refused(edit_generator):
    generator = Fp32Only(edit_generator.config)
    generator.load_state_dict(edit_generator.state_dict())
    image = random_image(np.random.default_rng(5), 20, 20, 3, np.uint8)
    with pytest.raises(BadOptionError, match="not accurate in bf16"):
        retouch(image, generator, precision="bf16")
    assert np.array_equal(retouch(image, generator, precision="fp32"), retouch(image, edit_generator))


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


# --------------------------------------------------------------------------------------------
# The engine against the network itself: round(x + s * (G(x) - x)), computed here with torch.
# Every other engine test compares the engine with itself; these catch a wrong sign, swapped or
# dropped channels, an ignored strength or floor, a wrong scale or rounding, edited alpha.
# Checked by breaking engine.py (then restoring it): `x - strength * residual`, channels
# reversed (`y.flip(3)`), strength ignored, the floor ignored, alpha overwritten: each fails here.


def direct(image: np.ndarray, generator: Generator, strength: float, floor: float) -> np.ndarray:
    """What the engine must return, from one whole-image forward pass of the network."""
    scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0, np.dtype(np.float32): 1.0}[image.dtype]
    colour = image[..., :3] if image.shape[2] >= 3 else np.repeat(image, 3, axis=2)
    x = torch.from_numpy(colour.astype(np.float32) / np.float32(scale)).permute(2, 0, 1)[None]  # (1, 3, H, W)
    with torch.no_grad():
        edit = generator.residual(x)  # R(x) = G(x) - x, without the rounding error of subtracting x back
        assert torch.allclose(generator(x) - x, edit, atol=1e-6)
    edit = torch.sign(edit) * (edit.abs() - floor).clamp(min=0.0)
    y = (x + strength * edit)[0].permute(1, 2, 0).double()  # (H, W, 3)
    if image.shape[2] == 1:
        y = y.mean(dim=2, keepdim=True)
    y = y.numpy()
    out = image.copy()
    if scale != 1.0:
        out[..., :y.shape[2]] = np.clip(np.round(y * scale), 0, scale).astype(image.dtype)
    else:
        out[..., :y.shape[2]] = y.astype(np.float32)
    return out


def _variant(crop: np.ndarray, kind: str) -> np.ndarray:
    h, w, _ = crop.shape
    alpha = np.linspace(0, 255, h * w).reshape(h, w, 1).astype(np.uint8)
    return {
        "rgb-u8": crop,
        "rgb-u16": crop.astype(np.uint16) * 257 + (np.arange(h * w * 3).reshape(h, w, 3) % 200).astype(np.uint16),
        "gray-u8": crop.mean(axis=2, keepdims=True).round().astype(np.uint8),
        "gray-u16": crop.mean(axis=2, keepdims=True).round().astype(np.uint16) * 257,
        "rgba-u8": np.concatenate([crop, alpha], axis=2),
        "rgba-u16": np.concatenate([crop, alpha], axis=2).astype(np.uint16) * 257,
        "rgb-f32": crop.astype(np.float32) / 255,
    }[kind]


@pytest.mark.parametrize("kind", ["rgb-u8", "rgb-u16", "gray-u8", "gray-u16", "rgba-u8", "rgba-u16", "rgb-f32"])
@pytest.mark.parametrize("strength, floor", [(1.0, 0.0), (0.6, 0.0), (1.4, 4 / 255)],
                         ids=["s1", "s0.6", "s1.4-floor"])
@pytest.mark.parametrize("tile", [0, 48], ids=["whole", "tiled"])
def test_retouch_is_x_plus_strength_times_the_networks_edit(portrait_crop, edit_generator, kind, strength, floor, tile):
    image = _variant(portrait_crop[:96, :80], kind)
    model = Model(edit_generator, residual_floor=floor)
    got = engine.retouch(image, model, RetouchOptions(strength=strength, tile_size=tile, device="cpu"))
    want = direct(image, edit_generator, strength, floor)
    assert got.shape == image.shape and got.dtype == image.dtype
    if image.shape[2] == 4:
        assert np.array_equal(got[..., 3], image[..., 3])  # alpha untouched
    colour = slice(0, min(image.shape[2], 3))
    if image.dtype == np.float32:
        np.testing.assert_allclose(got, want, atol=2e-6)
    else:
        off = np.abs(got[..., colour].astype(np.int64) - want[..., colour])
        # float summation order differs from one forward pass to another: a value that sits on
        # a rounding boundary may land one level off (more often at 16 bits), never more.
        assert off.max() <= 1 and (off > 0).mean() < (0.002 if image.dtype == np.uint8 else 0.02), \
            (off.max(), (off > 0).mean())
    moved = np.abs(got[..., colour].astype(np.float64) - image[..., colour]) * (255 / engine.SCALE[image.dtype])
    assert (moved > 2).mean() > 0.2, "the edit is too small for this check to mean anything"


def test_floor_leaves_small_edits_exactly_unchanged(portrait_crop, edit_generator):
    image = portrait_crop[:64, :64]
    plain = engine.retouch(image, Model(edit_generator), RetouchOptions(tile_size=0))
    floored = engine.retouch(image, Model(edit_generator, residual_floor=40 / 255), RetouchOptions(tile_size=0))
    # edits of at most 39 levels (before rounding: < 40), where no clipping at 0 or 255 hides a larger one
    small = (np.abs(plain.astype(int) - image) <= 39) & (plain > 0) & (plain < 255)
    assert small.any() and (~small).any()
    assert np.array_equal(floored[small], image[small])
    assert not np.array_equal(floored, image)


def test_non_finite_and_out_of_range_floats_do_not_spread(edit_generator):
    rng = np.random.default_rng(6)
    image = random_image(rng, 64, 64, 3, np.float32)
    clean = image.copy()
    bad = {(10, 10): np.nan, (30, 40): np.inf, (50, 20): -np.inf, (20, 50): 1e6, (40, 8): -3.0}
    for (y, x), value in bad.items():
        image[y, x, 1] = value
        clean[y, x, 1] = 0.0 if np.isnan(value) else min(max(value, 0.0), 1.0)  # what the network sees
    out = retouch(image, edit_generator, tile_size=0)
    seen = retouch(clean, edit_generator, tile_size=0)
    assert np.isnan(out[10, 10, 1]) and out[30, 40, 1] == np.inf and out[50, 20, 1] == -np.inf
    finite = np.isfinite(image)
    assert np.isfinite(out[finite]).all()  # no neighbour is poisoned
    others = np.ones(image.shape, bool)
    for (y, x) in bad:
        others[y, x, 1] = False
    np.testing.assert_allclose(out[others], seen[others], atol=1e-6)  # neighbours as if the inputs were in range
    for (y, x), value in bad.items():  # each out-of-range pixel: itself plus the edit the network made
        if np.isfinite(value):
            assert out[y, x, 1] == pytest.approx(value + (seen[y, x, 1] - clean[y, x, 1]), abs=1e-4)
