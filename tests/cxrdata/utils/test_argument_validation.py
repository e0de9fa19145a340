"""One rule per kind of mistake: wrong type -> TypeError, out of range -> ValueError."""

from __future__ import annotations

import numpy as np
import pytest

from cxrdata.utils.argument_validation import check_choice, check_int, check_number, check_seed, is_int


def test_types_and_ranges():
    assert is_int(np.int64(3)) and not is_int(True) and not is_int(3.0)
    assert check_int("n", np.int32(4), minimum=1) == 4
    with pytest.raises(TypeError, match=r"`n` must be an integer >= 1. Received: n='4'"):
        check_int("n", "4", minimum=1)
    with pytest.raises(ValueError, match=r"`n` must be an integer >= 1. Received: n=0"):
        check_int("n", 0, minimum=1)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        check_number("rate", 1.5, minimum=0, maximum=1)
    with pytest.raises(TypeError):
        check_number("rate", float("nan"))
    with pytest.raises(ValueError, match="must be one of a, b"):
        check_choice("mode", "c", ("a", "b"))


@pytest.mark.parametrize(
    "call",
    [
        lambda: check_seed(1.5),
        lambda: __import__("cxrdata").RandomAffine(seed=1.5),
        lambda: __import__("cxrmodels.training.config", fromlist=["_"]).TrainConfig(
            model="seed_cnn", batch_size=8, seed="1"
        ),
        lambda: __import__("cxrdata").synthetic.write_tree("unused", seed=1.5),
    ],
)
def test_a_seed_of_the_wrong_type_is_the_same_error_everywhere(call):
    with pytest.raises(TypeError, match=r"`seed` must be an integer >= 0"):
        call()
