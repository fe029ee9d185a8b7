"""Properties of the masked weighted mean."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetsim.runtime.aggregate import masked_mean
from fleetsim.types import Update

SHAPE = (3, 4)


def state() -> dict[str, np.ndarray]:
    return {"w": np.arange(12, dtype=np.float32).reshape(SHAPE), "b": np.ones(4, np.float32)}


weights = st.floats(min_value=0.1, max_value=100)
tensors = st.lists(st.floats(min_value=-10, max_value=10), min_size=12, max_size=12)


@given(st.lists(st.tuples(weights, tensors), min_size=1, max_size=5))
@settings(max_examples=50)
def test_full_updates_give_the_weighted_mean(items: list) -> None:
    updates = [Update(i, w, {"w": np.array(t, np.float32).reshape(SHAPE)})
               for i, (w, t) in enumerate(items)]
    got = masked_mean(state(), updates)
    total = sum(u.weight for u in updates)
    want = sum(u.weight * u.tensors["w"].astype(np.float64) for u in updates) / total
    np.testing.assert_allclose(got["w"], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got["b"], state()["b"])  # nobody trained it


@given(st.lists(st.tuples(weights, tensors), min_size=1, max_size=4))
@settings(max_examples=30)
def test_order_does_not_matter(items: list) -> None:
    updates = [Update(i, w, {"w": np.array(t, np.float32).reshape(SHAPE)})
               for i, (w, t) in enumerate(items)]
    forward = masked_mean(state(), updates)
    backward = masked_mean(state(), updates[::-1])
    # equal up to float64 rounding; the engine sorts updates by device id for bitwise repeats
    np.testing.assert_allclose(forward["w"], backward["w"], rtol=1e-6, atol=1e-6)


@given(weights, weights)
def test_equal_updates_are_a_fixed_point(w1: float, w2: float) -> None:
    same = np.full(SHAPE, 2.5, np.float32)
    got = masked_mean(state(), [Update(0, w1, {"w": same}), Update(1, w2, {"w": same})])
    np.testing.assert_allclose(got["w"], same, rtol=1e-6)


def test_masked_elements_average_over_holders_only() -> None:
    rows, cols = np.array([0, 1]), np.array([0, 1])
    part = Update(0, 1.0, {"w": np.zeros((2, 2), np.float32)}, {"w": np.ix_(rows, cols)})
    full = Update(1, 3.0, {"w": np.full(SHAPE, 4.0, np.float32)})
    got = masked_mean(state(), [part, full])
    assert got["w"][0, 0] == pytest.approx((1 * 0 + 3 * 4) / 4)  # both hold it
    assert got["w"][2, 3] == pytest.approx(4.0)  # only the full update holds it


def test_no_updates_and_inputs_untouched() -> None:
    s = state()
    assert all(np.array_equal(masked_mean(s, [])[k], s[k]) for k in s)
    update = Update(0, 2.0, {"w": np.zeros(SHAPE, np.float32)})
    before = update.tensors["w"].copy()
    masked_mean(s, [update])
    np.testing.assert_array_equal(s["w"], state()["w"])
    np.testing.assert_array_equal(update.tensors["w"], before)


def test_rejects_bad_updates() -> None:
    with pytest.raises(ValueError):
        masked_mean(state(), [Update(0, 0.0, {"w": np.zeros(SHAPE, np.float32)})])
    with pytest.raises(KeyError):
        masked_mean(state(), [Update(0, 1.0, {"nope": np.zeros(2, np.float32)})])
