"""Properties of the pure tile geometry that make tiled inference exact."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from plugin_server.tiling import Region, TilePlan

plans = st.builds(
    TilePlan.create,
    height=st.integers(1, 700), width=st.integers(1, 700),
    core=st.one_of(st.none(), st.integers(1, 300)),
    radius=st.integers(0, 40), stride=st.sampled_from([1, 2, 4]),
)


def covered_once(plan: TilePlan, regions: list[Region]) -> bool:
    count = np.zeros((plan.height, plan.width), np.int32)
    for r in regions:
        count[r.y0:r.y1, r.x0:r.x1] += 1
    return bool((count == 1).all())


@settings(max_examples=300, deadline=None)
@given(plans)
def test_windows_are_fixed_aligned_and_hold_core_plus_margin(plan: TilePlan):
    regions = list(plan.regions())
    assert covered_once(plan, regions)
    for core in regions:
        w = plan.window_for(core)
        assert (w.y1 - w.y0, w.x1 - w.x0) == (plan.window_height, plan.window_width)
        assert 0 <= w.y0 and w.y1 <= plan.height and 0 <= w.x0 and w.x1 <= plan.width
        assert w.y0 % plan.stride == 0 and w.x0 % plan.stride == 0
        # Each side either has the full margin or is the image's own border.
        assert w.y0 == 0 or w.y0 <= core.y0 - plan.margin
        assert w.x0 == 0 or w.x0 <= core.x0 - plan.margin
        assert w.y1 == plan.height or w.y1 >= core.y1 + plan.margin
        assert w.x1 == plan.width or w.x1 >= core.x1 + plan.margin


@settings(max_examples=150, deadline=None)
@given(plans, st.integers(1, 5))
def test_halving_the_core_splits_regions_exactly(plan: TilePlan, halvings: int):
    small = plan
    for _ in range(halvings):
        small = small.with_core(max(small.core // 2, 1))
    sub = [r for old in plan.regions() for r in small.regions(old)]
    assert covered_once(plan, sub)
    assert all(r.y0 % plan.stride == 0 and r.x0 % plan.stride == 0 for r in sub)
    assert all(r.y1 - r.y0 <= small.core and r.x1 - r.x0 <= small.core for r in sub)


def test_whole_image_plan_is_one_window():
    plan = TilePlan.create(1001, 757, None, radius=30, stride=2)
    assert [plan.window_for(r) for r in plan.regions()] == [Region(0, 1001, 0, 757)]
