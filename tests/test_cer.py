"""CER math on synthetic curves: interpolation, mappings, out of range, non-monotone."""

import math

import pytest

from pqorder.analysis.cer import ReferenceCurve, quant_ratio
from pqorder.analysis.sweep import spearman
from pqorder.errors import ConfigError

# ppl 40 at 3 bits ... 31 at 8 bits; M = −ppl
CURVE = ReferenceCurve((3, 4, 5, 8), (-40.0, -34.0, -32.0, -31.0))


def test_ratio_mappings():
    assert quant_ratio(4) == 0.75
    assert quant_ratio(4, "factor") == 4.0
    assert quant_ratio(4, "fraction", reference=32) == 0.875
    with pytest.raises(ConfigError):
        quant_ratio(0)


def test_interpolates_between_points():
    # level −37 lies halfway between 4 bits (C = 0.75, −34) and 3 bits (C = 0.8125, −40)
    cer = CURVE.cer(-37.0)
    assert cer.in_range and cer.value == pytest.approx((0.75 + 0.8125) / 2)
    assert CURVE.cer(-34.0).value == pytest.approx(0.75)


def test_log_perplexity_space_differs_from_metric_space():
    logc = ReferenceCurve(CURVE.bits, CURVE.metric, space="logppl").cer(-37.0)
    expected_t = (math.log(37) - math.log(34)) / (math.log(40) - math.log(34))
    assert logc.value == pytest.approx(0.75 + expected_t * 0.0625)
    assert logc.value != pytest.approx(CURVE.cer(-37.0).value)


def test_factor_mapping():
    curve = ReferenceCurve(CURVE.bits, CURVE.metric, mapping="factor")
    assert curve.cer(-37.0).value == pytest.approx((4.0 + 16 / 3) / 2)


def test_out_of_range_is_reported_not_clamped():
    weaker = CURVE.cer(-30.0)  # better than 8-bit quantization
    stronger = CURVE.cer(-80.0)  # worse than 3-bit quantization
    assert weaker.value is None and weaker.status == "weaker-than-curve"
    assert stronger.value is None and stronger.status == "stronger-than-curve"


def test_non_monotone_curve_is_detected_and_first_crossing_used():
    curve = ReferenceCurve((3, 4, 5, 6), (-40.0, -30.0, -33.0, -31.0))
    assert curve.non_monotone() == [4]
    assert curve.cer(-32.0).in_range
    assert CURVE.non_monotone() == []


def test_bad_curves():
    with pytest.raises(ConfigError):
        ReferenceCurve((4,), (-30.0,))
    with pytest.raises(ConfigError):
        ReferenceCurve((3, 4), (float("nan"), -30.0))


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833)
    assert spearman([1, 2], [1, 2]) is None
    assert spearman([1, 1, 1], [1, 2, 3]) is None
