"""Student variants: the configured student with components switched off. `baseline` trains with
the contrastive term alone, `distilled` is the configured student, and the ablation variants keep
exactly one component (or a named combination) on top of the contrastive term
(core.config.STUDENT_VARIANTS)."""
from __future__ import annotations

import dataclasses

from core.config import MEMORY_LEVELS, SIZE_SWITCHES, STUDENT_COMPONENTS, STUDENT_VARIANTS, Config, StudentConfig


def component_on(student: StudentConfig, component: str) -> bool:
    if component in SIZE_SWITCHES:
        block, setting = SIZE_SWITCHES[component]
        at_level = component not in MEMORY_LEVELS or student.memory_bank.level == MEMORY_LEVELS[component]
        return getattr(getattr(student, block), setting) > 0 and at_level
    return getattr(student.losses, component).weight > 0


def reads_teacher(student: StudentConfig) -> bool:
    """Whether training `student` reads the fitted teacher: its scores (in-batch or cached KD) or its
    global vectors (the guided term with `source: teacher`)."""
    losses = student.losses
    return losses.kd.weight > 0 or losses.cached_kd.weight > 0 or \
        (losses.guided.weight > 0 and losses.guided.source == "teacher")


def _at_kept_level(student: StudentConfig, kept: tuple[str, ...]) -> StudentConfig:
    """A variant that keeps MEMBER at one level (`member`, `member-token`) runs it at that level, so one
    config compares both; one that keeps both (`distilled`) runs the configured level."""
    levels = {MEMORY_LEVELS[c] for c in kept if c in MEMORY_LEVELS}
    if len(levels) != 1:
        return student
    banks = dataclasses.replace(student.memory_bank, level=levels.pop())
    return dataclasses.replace(student, memory_bank=banks)


def _switched_off(student: StudentConfig, components: tuple[str, ...]) -> StudentConfig:
    for name in components:
        if not component_on(student, name):  # e.g. MEMBER at the level the student does not run
            continue
        if name in SIZE_SWITCHES:
            block, setting = SIZE_SWITCHES[name]
            student = dataclasses.replace(student, **{block: dataclasses.replace(getattr(student, block), **{setting: 0})})
        else:
            loss = dataclasses.replace(getattr(student.losses, name), weight=0.0)
            student = dataclasses.replace(student, losses=dataclasses.replace(student.losses, **{name: loss}))
    return student


def variant_config(cfg: Config, variant: str) -> StudentConfig:
    """The configured student with every component that `variant` does not keep switched off. A
    variant that keeps the queues but none of the terms configured to read them (e.g. `queue`, or
    `user` under `queue_terms: [kd]`) has the contrastive term read them: USER's unified objective,
    in-batch and queued negatives in one contrastive loss. A variant without SelfAlign's local terms
    drops `local_image_tokens`, which only they read, so sweeping it keeps e.g. the baseline's key."""
    if variant not in STUDENT_VARIANTS:
        raise ValueError(f"unknown student variant {variant!r} (expected one of {list(STUDENT_VARIANTS)})")
    kept = STUDENT_VARIANTS[variant]
    student = _at_kept_level(cfg.student, kept)
    student = _switched_off(student, tuple(c for c in STUDENT_COMPONENTS if c not in kept))
    if not (component_on(student, "align") or component_on(student, "concept")):
        student = dataclasses.replace(student, local_image_tokens=0)  # no local terms read it: the key stays
    momentum = student.momentum
    if variant != "distilled" and "queue" in kept:
        readers = [t for t in momentum.queue_terms if t == "contrastive" or component_on(student, t)]
        student = dataclasses.replace(student, momentum=dataclasses.replace(momentum, queue_terms=readers or ["contrastive"]))
    return student
