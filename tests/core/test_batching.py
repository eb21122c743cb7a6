import numpy as np

from core.data.batching import LexicalBatches, hashed_bow, lexical_caption_order, nearest_neighbours


def test_neighbours_are_the_lexically_closest():
    items = [["red circle left of blue square"], ["blue square right of red circle"], ["green triangle above"],
             ["a green triangle over here"]]
    nb = nearest_neighbours(hashed_bow(items), 1)
    assert nb[:, 0].tolist() == [1, 0, 3, 2]


def test_epoch_visits_every_caption_once_in_groups():
    rng = np.random.default_rng(0)
    vectors = hashed_bow([[f"word{i // 3} thing"] for i in range(12)])
    nb = nearest_neighbours(vectors, 2)
    order = lexical_caption_order(nb, captions_per_image=5, group_size=3, rng=rng)
    assert sorted(order.tolist()) == list(range(60))
    first_round_images = order[:12] // 5
    assert sorted(first_round_images.tolist()) == list(range(12))  # every image once per round


def test_sampler_batches_and_determinism():
    captions = [f"c{i // 5} x" for i in range(40)]
    a, b = LexicalBatches(captions, 5, 8, 4, seed=1), LexicalBatches(captions, 5, 8, 4, seed=1)
    batches = list(a)
    assert len(batches) == len(a) == 5 and all(len(x) == 8 for x in batches)
    assert batches == list(b)


def test_neighbours_in_blocks_of_a_few_rows_equal_one_block():
    vectors = hashed_bow([[f"word{i % 7} thing{i % 5} item{i}"] for i in range(50)])
    whole = nearest_neighbours(vectors, 3, block_bytes=1 << 30)
    np.testing.assert_array_equal(nearest_neighbours(vectors, 3, block_bytes=16 * 50 * 3), whole)  # 3 rows a block
