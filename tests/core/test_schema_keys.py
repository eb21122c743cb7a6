from core.config import Config, TeacherConfig
from core.io import sha256_json
from core.schema import build, stage_key, to_dict

# The input pipeline's options: none but sampling and draft decoding changes a batch, and those two
# enter a stage key only once set.
INPUT_PIPELINE = {"sampling": "image", "jpeg_draft": True, "num_workers": 3, "prefetch_factor": 4, "image_cache": "uint8"}


def test_new_options_at_their_default_stay_out_of_stage_keys():
    """A teacher stamped before `cross` and `fine_tokens` existed keeps its key while they are unset."""
    cfg = TeacherConfig()
    key = stage_key(cfg)
    full = to_dict(cfg)
    assert "cross" in full and "cross" not in key
    assert "fine_tokens" in full["image_tower"] and "fine_tokens" not in key["image_tower"]
    assert "also" in full["image_tower"] and "also" not in key["image_tower"]
    assert {k: v for k, v in full.items() if k not in ("cross", "ensemble")} == \
        {**key, "image_tower": full["image_tower"], "train": full["train"]}
    assert set(full["train"]) - set(key["train"]) == set(INPUT_PIPELINE)



def test_a_list_of_sections_enters_the_key_as_plain_data():
    tower = build(Config, {"student": {"image_tower": {"also": [{"name": "resnet10t"}]}}}).student.image_tower
    key = stage_key(tower)
    assert key["also"] == [{"name": "resnet10t", "pretrained": False, "weights": None, "model_kwargs": {}}]
    assert sha256_json(key)  # what a stage's identity hashes


def test_input_pipeline_options_enter_the_key_only_when_they_change_the_batches():
    key = stage_key(build(Config, {"student": {"train": INPUT_PIPELINE}}).student)["train"]
    assert {k for k in INPUT_PIPELINE if k in key} == {"sampling", "jpeg_draft"}


def test_the_ensemble_a_run_distils_from_never_enters_the_teacher_key():
    """Choosing an ensemble does not make the fitted configured teacher stale: it is fitted the same way."""
    plain = build(Config, {"experiment": {"teacher_variants": {"b": ["teacher.margin=0.1"]},
                                          "teacher_ensembles": {"pair": ["configured", "b"]}}})
    chosen = build(Config, {**to_dict(plain), "teacher": {**to_dict(plain.teacher), "ensemble": "pair"}})
    assert chosen.teacher.ensemble == "pair" and stage_key(chosen.teacher) == stage_key(plain.teacher)


def test_a_set_option_enters_the_key():
    cfg = build(Config, {"teacher": {"matching": "cross", "cross": {"layers": 1},
                                     "image_tower": {"train_top": 1, "freeze": True, "fine_tokens": True}}})
    key = stage_key(cfg.teacher)
    assert key["cross"]["layers"] == 1 and key["image_tower"]["fine_tokens"] is True
