"""The training input pipeline: workers, the image-level sampler and the uint8 image cache change
how fast batches come, never what they hold."""
from collections import Counter
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.data import loading
from core.data.image_cache import MANIFEST, PIXELS, image_cache
from core.data.images import ImagePreprocess, load_image
from core.data.loading import lexical_rng, pair_loader
from core.data.records import CaptionSplit
from core.io import read_json, write_json

PRE = ImagePreprocess(size=24, resize=28, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
ORDERS = [("random", "caption"), ("lexical", "caption"), ("random", "image"), ("lexical", "image")]


def _epochs(loader, n: int = 2) -> list[list]:
    return [list(loader) for _ in range(n)]


def _same(a: loading.Batch, b: loading.Batch) -> bool:
    return all((getattr(a, f.name) is None and getattr(b, f.name) is None) or
               torch.equal(getattr(a, f.name), getattr(b, f.name)) for f in fields(a))


@pytest.mark.parametrize(("batching", "sampling"), ORDERS)
def test_batches_are_the_same_with_0_and_2_workers(splits, tiny_student, batching, sampling):
    """Same pixels, tokens and indices in the same order over two epochs, and the same draws left in
    the global generator (the one dropout reads)."""
    runs = []
    for workers in (0, 2):
        torch.manual_seed(0)
        loader = pair_loader(splits["train"], PRE, tiny_student.tokenize, 8, generator=torch.Generator().manual_seed(1),
                             batching=batching, seed=1, sampling=sampling, num_workers=workers)
        runs.append((_epochs(loader), torch.get_rng_state()))
        del loader
    (alone, rng_alone), (workers, rng_workers) = runs
    assert [len(e) for e in alone] == [6 if sampling == "image" else 30] * 2
    assert all(_same(a, b) for ea, eb in zip(alone, workers, strict=True) for a, b in zip(ea, eb, strict=True))
    assert torch.equal(rng_alone, rng_workers)
    assert not all(torch.equal(a.caption_index, b.caption_index) for a, b in zip(*alone, strict=True))  # epochs differ


@pytest.mark.parametrize("batching", ["random", "lexical"])
def test_the_image_sampler_decodes_each_image_once_per_epoch(splits, tiny_student, monkeypatch, batching):
    split, decoded = splits["train"], Counter()
    real = loading.decode

    def counting(path, preprocess, draft):
        decoded[path] += 1
        return real(path, preprocess, draft)

    monkeypatch.setattr(loading, "decode", counting)
    monkeypatch.setattr(loading, "MEMORY_CACHE_BYTES", 0)  # count decodes, not the in-memory cache's hits
    loader = pair_loader(split, PRE, tiny_student.tokenize, 8, generator=torch.Generator().manual_seed(0),
                         batching=batching, sampling="image")
    captions = set()
    for _ in range(3):
        decoded.clear()
        batches = list(loader)
        images = torch.cat([b.image_index for b in batches])
        assert sorted(images.tolist()) == list(range(split.n_images))  # every image, once
        assert decoded == Counter(split.image_paths)  # each decoded once
        caption = torch.cat([b.caption_index for b in batches])
        assert torch.equal(caption // split.captions_per_image, images)  # each with one of its own captions
        captions |= set(caption.tolist())
    assert len(captions) > split.n_images  # a caption drawn per epoch, not always the same one

    decoded.clear()
    list(pair_loader(split, PRE, tiny_student.tokenize, 8, generator=torch.Generator().manual_seed(0),
                     batching=batching))
    assert decoded == Counter({p: split.captions_per_image for p in split.image_paths})  # per caption: five times


@pytest.mark.parametrize("batching", ["random", "lexical"])
def test_the_image_samplers_order_is_restored_by_its_generators(splits, tiny_student, batching):
    """What a checkpoint saves (the data-order generator, the lexical NumPy generator) gives the next epoch."""
    def loader(generator):
        return pair_loader(splits["train"], None, tiny_student.tokenize, 8, generator=generator,
                           batching=batching, seed=3 if generator.initial_seed() == 5 else 4, sampling="image",
                           load_images=False)

    first = loader(torch.Generator().manual_seed(5))
    list(first)
    state = first.batch_sampler.generator.get_state() if batching == "random" else None
    lexical = None if lexical_rng(first) is None else lexical_rng(first).bit_generator.state
    expected = [b.caption_index for b in first]
    resumed = loader(torch.Generator().manual_seed(99))
    if state is not None:
        resumed.batch_sampler.generator.set_state(state)
    if lexical is not None:
        lexical_rng(resumed).bit_generator.state = lexical
    assert all(torch.equal(a, b.caption_index) for a, b in zip(expected, resumed, strict=True))


@pytest.fixture(scope="module")
def jpeg_split(tmp_path_factory) -> CaptionSplit:
    """JPEGs of several shapes, some at least twice the resize (where a draft decode is smaller)."""
    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(120, 90), (61, 97), (200, 200), (29, 31), (150, 64), (88, 300)]):
        smooth = np.kron(rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3)), np.ones((8, 8, 1)))[:h, :w]
        paths.append(root / f"im{i}.jpg")
        Image.fromarray(smooth.astype(np.uint8)).save(paths[-1], quality=90)
    return CaptionSplit("train", str(root), tuple(f"caption {j}" for j in range(2 * len(paths))), 2, tuple(paths))


@pytest.mark.parametrize("draft", [False, True])
def test_the_uint8_cache_returns_what_decoding_and_preprocessing_give(jpeg_split, splits, tmp_path, draft):
    for split in (jpeg_split, splits["val"]):  # JPEGs; the synthetic PNGs
        cache = image_cache(split, PRE, tmp_path, draft=draft, workers=0, block=4, show=False)
        assert len(cache) == split.n_images
        for i, path in enumerate(split.image_paths):
            cached = cache.crop(i)
            assert cached.dtype == np.uint8 and cached.shape == (24, 24, 3)
            assert np.array_equal(cached, PRE.crop(load_image(path, draft=(28, 28) if draft else None)))


def test_the_uint8_cache_is_reused_and_rebuilt_when_its_key_changes(jpeg_split, tmp_path):
    def build(pre=PRE, draft=False):
        return image_cache(jpeg_split, pre, tmp_path, draft=draft, workers=0, show=False).directory

    def mtime(d: Path) -> int:
        return (d / PIXELS).stat().st_mtime_ns

    first = build()
    stamp = mtime(first)
    assert build() == first and mtime(first) == stamp  # reused
    other = build(ImagePreprocess(size=20, resize=20, mean=PRE.mean, std=PRE.std))
    drafted = build(draft=True)
    assert len({first, other, drafted}) == 3  # another crop or decode: another cache
    # a directory whose manifest says something else (an older format, another split) is rebuilt, not read
    write_json(first / MANIFEST, {**read_json(first / MANIFEST), "version": 0})
    assert build() == first and mtime(first) != stamp and read_json(first / MANIFEST)["version"] == 1
    stamp = mtime(first)
    np.save(first / PIXELS, np.zeros((2, 24, 24, 3), np.uint8))  # an array of the wrong shape
    assert build() == first and mtime(first) != stamp
    with pytest.raises(FileNotFoundError):
        image_cache(jpeg_split, PRE, tmp_path / "elsewhere", build=False)


def test_a_loader_over_the_cache_gives_the_decoding_loaders_batches(splits, tiny_student, tmp_path):
    split = splits["train"]
    cache = image_cache(split, PRE, tmp_path, workers=2, show=False)
    batches = [_epochs(pair_loader(split, PRE, tiny_student.tokenize, 8, generator=torch.Generator().manual_seed(2),
                                   cached=c, num_workers=w), 1)[0] for c, w in ((None, 0), (cache, 2))]
    assert all(_same(a, b) for a, b in zip(*batches, strict=True))


def test_a_training_batch_holds_the_uint8_crops(jpeg_split, tiny_student):
    batch = next(iter(pair_loader(jpeg_split, PRE, tiny_student.tokenize, 4, shuffle=False)))
    assert batch.images.dtype == torch.uint8 and batch.images.shape == (4, 24, 24, 3)
    for row, i in zip(batch.images, batch.image_index.tolist(), strict=True):
        assert np.array_equal(row.numpy(), PRE.crop(load_image(jpeg_split.image_paths[i])))


def test_batches_move_without_blocking(splits, tiny_student):
    batch = next(iter(pair_loader(splits["train"], PRE, tiny_student.tokenize, 4)))
    moved = batch.to(torch.device("cpu"), non_blocking=True)
    assert _same(batch, moved)
    if torch.cuda.is_available():
        pinned = batch.pin_memory()
        assert pinned.images.is_pinned() and _same(pinned.to(torch.device("cuda"), non_blocking=True).to("cpu"), batch)


def test_normalisation_by_table_is_the_per_pixel_arithmetic():
    pixels = np.stack([np.arange(256, dtype=np.uint8).reshape(16, 16)] * 3, axis=-1)  # every value, every channel
    direct = (pixels.astype(np.float32) / 255.0 - np.asarray(PRE.mean, np.float32)) / np.asarray(PRE.std, np.float32)
    assert np.array_equal(PRE.normalise(pixels), direct.transpose(2, 0, 1))


def test_default_workers_share_the_cores_among_torchrun_processes(monkeypatch):
    from core.config import TrainConfig

    monkeypatch.setattr("os.cpu_count", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert TrainConfig().workers() == 8 and TrainConfig(num_workers=0).workers() == 0
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert TrainConfig().workers() == 3


def test_length_sorted_caption_batches_hold_every_caption_once_with_its_in_order_tokens(splits, tiny_student):
    """Sorting a window of batches by length changes which captions share a batch, never a caption's
    tokens; each batch is padded only to its own longest caption."""
    split = splits["train"]
    in_order = list(loading.caption_batches(split, tiny_student.tokenize, 4))
    sorted_ = list(loading.caption_batches(split, tiny_student.tokenize, 4, sort_window=3))
    assert len(sorted_) == len(in_order)
    assert torch.equal(torch.cat([b.caption_index for b in in_order]), torch.arange(split.n_captions))
    rows = torch.cat([b.caption_index for b in sorted_])
    assert sorted(rows.tolist()) == list(range(split.n_captions)) and not torch.equal(rows, torch.arange(split.n_captions))
    tokens = {int(i): ids[m.bool()] for b in in_order for i, ids, m in zip(b.caption_index, b.input_ids, b.attention_mask, strict=True)}
    lengths = []
    for b in sorted_:
        assert b.attention_mask[:, -1].any()  # trimmed to the batch's longest
        for i, ids, m in zip(b.caption_index, b.input_ids, b.attention_mask, strict=True):
            assert torch.equal(ids[m.bool()], tokens[int(i)])
        lengths.append(b.attention_mask.sum(1))
    window = torch.cat(lengths[:3])  # the first window of 3 batches: longest first
    assert torch.equal(window, window.sort(descending=True).values)
