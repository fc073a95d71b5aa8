"""pipeline.synthetic: the candidate draw for catalogues too large to score in full."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.synthetic import generate
from pipeline.config import SyntheticConfig

SMALL = dict(num_users=3000, num_items=2000, mean_interactions=20)


def test_candidates_give_distinct_known_items_deterministically():
    config = SyntheticConfig(**SMALL, candidate_items=400)
    frame = generate(config)
    assert frame.equals(generate(config))
    assert not frame.duplicated(["user_id", "item_id"]).any()
    assert frame["item_id"].between(1, SMALL["num_items"]).all()
    assert frame["user_id"].nunique() == SMALL["num_users"]


def test_candidates_follow_the_full_rule():
    """Same users, items and popularity (the seed draws them first): the candidate draw picks
    items about as often as scoring the whole catalogue does, and as well-liked."""
    full = generate(SyntheticConfig(**SMALL))
    drawn = generate(SyntheticConfig(**SMALL, candidate_items=400))
    counts = [np.bincount(f["item_id"], minlength=SMALL["num_items"] + 1) for f in (full, drawn)]
    assert np.corrcoef(*counts)[0, 1] > 0.7
    assert abs(len(drawn) / len(full) - 1) < 0.02
    liked = [(f["rating"] > 3.5).mean() for f in (full, drawn)]
    assert abs(liked[0] - liked[1]) < 0.05


@pytest.mark.parametrize("bad", [-1, 1])
def test_bad_candidate_count_names_the_key(bad):
    with pytest.raises(ValueError, match=f"synthetic.candidate_items must be 0 .* got {bad}"):
        generate(SyntheticConfig(num_users=10, num_items=10, candidate_items=bad))
