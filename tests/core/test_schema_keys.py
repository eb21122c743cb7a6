from core.config import Config, TeacherConfig
from core.schema import build, stage_key, to_dict


def test_new_options_at_their_default_stay_out_of_stage_keys():
    """A teacher stamped before `cross` and `fine_tokens` existed keeps its key while they are unset."""
    cfg = TeacherConfig()
    key = stage_key(cfg)
    full = to_dict(cfg)
    assert "cross" in full and "cross" not in key
    assert "fine_tokens" in full["image_tower"] and "fine_tokens" not in key["image_tower"]
    assert {k: v for k, v in full.items() if k != "cross"} == {**key, "image_tower": full["image_tower"]}


def test_a_set_option_enters_the_key():
    cfg = build(Config, {"teacher": {"matching": "cross", "cross": {"layers": 1},
                                     "image_tower": {"train_top": 1, "freeze": True, "fine_tokens": True}}})
    key = stage_key(cfg.teacher)
    assert key["cross"]["layers"] == 1 and key["image_tower"]["fine_tokens"] is True
