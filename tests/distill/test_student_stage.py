import pytest
from torch import nn

from core.config import Config, StudentConfig
from core.schema import stage_key
from core.towers.frozen import NOT_FROZEN
from distill.student_stage import _memory
from distill.terms import student_objective
from distill.variants import component_on, variant_config


def test_token_queues_are_kept_only_when_the_alignment_term_reads_them():
    cfg = StudentConfig()
    cfg.momentum.queue_size, cfg.losses.cached_kd.weight, cfg.losses.align.weight = 8, 0.0, 0.1
    with_align = _memory(cfg, nn.Linear(2, 2), None, NOT_FROZEN, 4, "cpu")
    assert with_align.queues.img_tokens is not None and with_align.queues.txt_tokens is not None
    cfg.momentum.queue_terms = ["kd"]
    kd_only = _memory(cfg, nn.Linear(2, 2), None, NOT_FROZEN, 4, "cpu")
    assert kd_only.queues.img_tokens is None and kd_only.queues.txt_tokens is None
    assert len(kd_only.queues.images.vectors) == 8  # the pair queues stay


def _configured() -> Config:
    cfg = Config()
    s = cfg.student
    s.momentum.queue_size, s.momentum.queue_terms = 16, ["kd"]
    s.memory_bank.slots, s.hierarchy.local_dim, s.self_guided.attention_dim = 8, 16, 8
    s.losses.guided.weight = 0.5
    return cfg


def test_enhancement_variants_keep_only_their_components():
    cfg = _configured()
    member = variant_config(cfg, "member")
    assert member.memory_bank.slots == 8 and member.hierarchy.local_dim == 0 and member.self_guided.attention_dim == 0
    assert member.losses.kd.weight == 0 and member.losses.guided.weight == 0 and member.momentum.queue_size == 0
    hierarchical = variant_config(cfg, "hierarchical")
    assert hierarchical.hierarchy.local_dim == 16 and hierarchical.embedding_dim == 128 + 16
    assert [t.name for t in student_objective(hierarchical).terms] == ["contrastive", "lexical"]
    assert all(component_on(variant_config(cfg, "distilled"), c) for c in ("memory_bank", "hierarchy", "self_guided",
                                                                           "guided", "queue", "kd"))


@pytest.mark.parametrize("configured", ["global", "token"])
def test_member_variants_run_their_level_from_one_config(configured):
    cfg = _configured()
    cfg.student.memory_bank.level = configured
    for variant, level in (("member", "global"), ("member-token", "token"), ("kd+member-token", "token")):
        student = variant_config(cfg, variant)
        assert student.memory_bank.slots == 8 and student.memory_bank.level == level, variant
        assert component_on(student, "memory_token") == (level == "token") != component_on(student, "memory_bank")
    assert variant_config(cfg, "kd+member-token").losses.kd.weight > 0
    distilled = variant_config(cfg, "distilled")  # the configured level; the other level's component is off
    assert distilled.memory_bank.slots == 8 and distilled.memory_bank.level == configured
    assert component_on(distilled, "memory_token") == (configured == "token")
    for variant in ("baseline", "kd", "hierarchical"):
        assert variant_config(cfg, variant).memory_bank.slots == 0
    cfg.student.memory_bank.slots = 0  # off in the config: both variants have nothing to keep
    assert not component_on(variant_config(cfg, "member-token"), "memory_token")


def test_user_reads_the_queues_with_its_contrastive_term_unless_a_kept_term_is_configured_to():
    cfg = _configured()
    user = variant_config(cfg, "user")
    assert user.self_guided.attention_dim == 8 and user.losses.guided.weight == 0.5 and user.losses.kd.weight == 0
    assert user.momentum.queue_size == 16 and user.momentum.queue_terms == ["contrastive"]  # USER's unified objective
    assert variant_config(cfg, "kd+user").momentum.queue_terms == ["kd"]
    assert variant_config(cfg, "distilled").momentum.queue_terms == ["kd"]  # the configured student as configured


def test_local_image_tokens_reach_only_variants_with_selfalign_terms_and_leave_the_others_keys_alone():
    cfg = _configured()
    cfg.student.losses.align.weight = 0.1
    before = {v: stage_key(variant_config(cfg, v)) for v in ("baseline", "kd", "selfalign", "distilled")}
    cfg.student.local_image_tokens = 16
    assert variant_config(cfg, "selfalign").local_image_tokens == variant_config(cfg, "distilled").local_image_tokens == 16
    assert stage_key(variant_config(cfg, "baseline")) == before["baseline"]  # sweeping it keeps these students
    assert stage_key(variant_config(cfg, "kd")) == before["kd"]
    assert stage_key(variant_config(cfg, "distilled")) != before["distilled"]
    cfg.student.local_image_tokens = -1
    assert "local_image_tokens" in " ".join(cfg.student.problems())


def test_memory_banks_alone_keep_no_momentum_copy():
    cfg = StudentConfig()
    cfg.memory_bank.slots, cfg.losses.cached_kd.weight = 4, 0.0
    memory = _memory(cfg, nn.Linear(2, 2), None, NOT_FROZEN, 4, "cpu")
    assert memory.momentum.model is None and memory.queues is None and memory.memory_banks
