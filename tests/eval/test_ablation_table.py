import pytest

from core.machine import machine_info
from eval.ablation_table import summarise_rows, to_markdown
from eval.records import SystemResult


def metrics(rsum: float) -> SystemResult:
    """One seed's record (the table reads its metrics)."""
    return SystemResult("x-seed0", "x", 0, {"i2t_r1": rsum / 10, "i2t_r5": 0.0, "i2t_r10": 0.0, "t2i_r1": 1.0,
                                             "t2i_r5": 0.0, "t2i_r10": 0.0, "rsum": rsum})


def test_rows_get_mean_sample_std_and_the_change_against_contrastive_only():
    rows = summarise_rows([
        {"variant": "baseline", "label": "contrastive only", "terms": ["contrastive"], "per_seed": [metrics(100), metrics(102)]},
        {"variant": "kd", "label": "+ in-batch KD", "terms": ["contrastive", "kd"], "per_seed": [metrics(110), metrics(114)]},
        {"variant": "queue", "label": "+ queues", "terms": ["contrastive"], "per_seed": [metrics(101), metrics(103)]},
    ])
    base, kd, queue = rows
    assert base["mean"]["rsum"] == 101 and base["std"]["rsum"] == pytest.approx(2 ** 0.5)
    assert kd["rsum_vs_contrastive"] == {"delta": 11.0, "seed_spread": pytest.approx(8 ** 0.5), "beyond_spread": True}
    assert queue["rsum_vs_contrastive"]["beyond_spread"] is False and "rsum_vs_contrastive" not in base
    text = to_markdown({"split": "val", "gallery_images": 16, "seeds": [0, 1], "budget": "2 epochs", "rows": rows,
                        "skipped": ["selfalign"], "machine": machine_info(), "command": "itr-distill ablate x.yaml"})
    assert "| + in-batch KD | contrastive, kd | 11.2 ± 0.3 |" in text and "+11.0 (beyond spread)" in text
    assert "| + queues | contrastive |" in text and "+1.0 |" in text and "Not trained" in text and "selfalign" in text


def test_one_seed_has_no_spread_so_no_change_is_called_beyond_it():
    rows = summarise_rows([
        {"variant": "baseline", "label": "contrastive only", "terms": ["contrastive"], "per_seed": [metrics(100)]},
        {"variant": "kd", "label": "+ in-batch KD", "terms": ["contrastive", "kd"], "per_seed": [metrics(130)]},
    ])
    assert rows[0]["std"]["rsum"] is None
    assert rows[1]["rsum_vs_contrastive"] == {"delta": 30.0, "seed_spread": None, "beyond_spread": None}
    text = to_markdown({"split": "val", "gallery_images": 16, "seeds": [0], "budget": "2 epochs", "rows": rows,
                        "skipped": [], "machine": machine_info(), "command": "itr-distill ablate x.yaml"})
    assert "| + in-batch KD | contrastive, kd | 13.0 | 0.0 |" in text and "| +30.0 |" in text
    assert "±" not in text.split("| Student")[1] and "beyond spread)" not in text and "one seed: no spread" in text
