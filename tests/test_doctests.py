"""The small exact examples in the math modules' docstrings are part of the specification."""

import doctest

import pytest

import certcore.math.anytime
import certcore.math.bounds
import certcore.math.radius
import certcore.math.sample_size


@pytest.mark.parametrize(
    "module", [certcore.math.anytime, certcore.math.bounds, certcore.math.radius, certcore.math.sample_size]
)
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
