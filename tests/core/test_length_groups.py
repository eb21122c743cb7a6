import pytest
import torch

from core.length_groups import SLACK, extents, length_groups


def random_mask(seed: int = 0, rows: int = 60, width: int = 32) -> torch.Tensor:
    """Prefix masks of caption-like lengths, plus a few rows with holes (valid tokens after padding)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, width + 1, (rows,), generator=g)
    mask = torch.arange(width)[None] < lengths[:, None]
    mask[::7, 1] = False
    return mask


def test_extents_keep_every_valid_token():
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)
    assert extents(mask).tolist() == [2, 3, 4]


@pytest.mark.parametrize("max_tokens", [None, 40, 1])
def test_groups_cover_every_row_once_within_their_width_and_budget(max_tokens):
    mask = random_mask()
    groups = length_groups(mask, max_tokens)
    assert sorted(groups.order.tolist()) == list(range(len(mask)))
    assert groups.spans[0][0] == 0 and groups.spans[-1][1] == len(mask)
    ext = extents(mask)
    for (start, stop, width), (following, _, _) in zip(groups.spans, groups.spans[1:] + [(len(mask), 0, 0)], strict=True):
        assert stop == following  # consecutive, no gap
        rows = ext[groups.order[start:stop]]
        assert int(rows.max()) == width  # trimmed to the group's longest
        assert bool((rows >= SLACK * width).all())  # no row is padded by more than the slack allows
        if max_tokens is not None and stop - start > 1:
            assert (stop - start) * width <= max_tokens


def test_grouping_trims_most_of_the_padding():
    mask = random_mask(1, rows=400)
    groups = length_groups(mask)
    grouped = sum((stop - start) * width for start, stop, width in groups.spans)
    assert grouped <= mask.sum() / SLACK < mask.numel()


def test_restore_puts_rows_back_in_their_order():
    mask = random_mask(2)
    groups = length_groups(mask)
    values = torch.arange(len(mask))[:, None] * torch.ones(1, 3)
    torch.testing.assert_close(groups.restore(values[groups.order]), values)
    torch.testing.assert_close(groups.restore(values[groups.order].T, dim=1), values.T)
