"""Where two decodings part, and full's logit margin there."""

import pytest
import torch

from earlyexit.measure.divergence import first_divergence, logit_margin
from tests.conftest import damped_model


def test_equal_outputs_have_no_divergence():
    assert first_divergence([[1, 2], [3]], [[1, 2], [3]]) is None


def test_the_first_differing_prompt_and_position_are_named_and_all_differing_counted():
    parted = first_divergence([[1, 2, 3], [4, 5], [6, 7]], [[1, 2, 3], [4, 9], [0]])
    assert (parted.prompt, parted.position, parted.prompts_differing) == (1, 1, 2)


def test_a_shorter_output_parts_where_it_ends():
    parted = first_divergence([[1, 2, 3]], [[1, 2]])
    assert (parted.prompt, parted.position) == (0, 2)


def test_outputs_of_different_prompt_counts_are_refused():
    with pytest.raises(ValueError, match="2 outputs against 1"):
        first_divergence([[1], [2]], [[1]])


def test_the_margin_is_top1_minus_top2_of_the_logits_for_that_token():
    model = damped_model(2)
    prompt, output = [3, 1, 4], [1, 5, 9]
    margin = logit_margin(model, prompt, output, 2)
    logits = model(torch.tensor([[3, 1, 4, 1, 5]])).logits[0, -1]
    top = torch.topk(logits, 2).values
    assert margin == pytest.approx(float(top[0] - top[1])) and margin >= 0
