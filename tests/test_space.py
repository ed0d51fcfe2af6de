from __future__ import annotations

import math

import pytest
from pydantic import TypeAdapter, ValidationError

from autoslm import space
from autoslm.space import Categorical, Float, Int


def test_dimensions_validate_and_contain() -> None:
    assert Float(low=0.1, high=0.5).contains(0.3)
    assert not Int(low=0, high=10, step=2).contains(3)
    assert Categorical(choices=("rtn", "gptq")).contains("gptq")
    with pytest.raises(ValidationError, match="must not exceed"):
        Int(low=5, high=1)
    with pytest.raises(ValidationError, match="log-scale"):
        Float(low=0, high=1, log=True)


def test_space_size_and_round_trip() -> None:
    dims = {"blocks": Int(low=0, high=4), "bits": Categorical(choices=(4, 8))}
    assert space.size(dims) == 10
    assert math.isinf(space.size({"r": Float(low=0.1, high=0.9)}))
    adapter = TypeAdapter(space.Dimension)
    for dim in [*dims.values(), Float(low=0.1, high=0.9, log=True)]:
        assert adapter.validate_python(dim.model_dump()) == dim
