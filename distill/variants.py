"""Student variants: the configured student with components switched off. `baseline` trains with
the contrastive term alone, `distilled` is the configured student, and the ablation variants keep
exactly one component (or a named combination) on top of the contrastive term
(core.config.STUDENT_VARIANTS)."""
from __future__ import annotations

import dataclasses

from core.config import SIZE_SWITCHES, STUDENT_COMPONENTS, STUDENT_VARIANTS, Config, StudentConfig


def component_on(student: StudentConfig, component: str) -> bool:
    if component in SIZE_SWITCHES:
        block, setting = SIZE_SWITCHES[component]
        return getattr(getattr(student, block), setting) > 0
    return getattr(student.losses, component).weight > 0


def _switched_off(student: StudentConfig, components: tuple[str, ...]) -> StudentConfig:
    for name in components:
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
    in-batch and queued negatives in one contrastive loss."""
    if variant not in STUDENT_VARIANTS:
        raise ValueError(f"unknown student variant {variant!r} (expected one of {list(STUDENT_VARIANTS)})")
    kept = STUDENT_VARIANTS[variant]
    student = _switched_off(cfg.student, tuple(c for c in STUDENT_COMPONENTS if c not in kept))
    momentum = student.momentum
    if variant != "distilled" and "queue" in kept:
        readers = [t for t in momentum.queue_terms if t == "contrastive" or component_on(student, t)]
        student = dataclasses.replace(student, momentum=dataclasses.replace(momentum, queue_terms=readers or ["contrastive"]))
    return student
