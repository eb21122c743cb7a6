from torch import nn

from core.config import StudentConfig
from core.towers.frozen import NOT_FROZEN
from distill.student_stage import _memory


def test_token_queues_are_kept_only_when_the_alignment_term_reads_them():
    cfg = StudentConfig()
    cfg.momentum.queue_size, cfg.losses.cached_kd.weight, cfg.losses.align.weight = 8, 0.0, 0.1
    with_align = _memory(cfg, nn.Linear(2, 2), None, NOT_FROZEN, 4, "cpu")
    assert with_align.queues.img_tokens is not None and with_align.queues.txt_tokens is not None
    cfg.momentum.queue_terms = ["kd"]
    kd_only = _memory(cfg, nn.Linear(2, 2), None, NOT_FROZEN, 4, "cpu")
    assert kd_only.queues.img_tokens is None and kd_only.queues.txt_tokens is None
    assert len(kd_only.queues.images.vectors) == 8  # the pair queues stay
