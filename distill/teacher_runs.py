"""Where each named teacher of a run is fitted: the configured teacher in the run's `teacher/`, each
variant of `experiment.teacher_variants` (the configured teacher with dotted `teacher.*` overrides)
at a seed in `run_dir/teachers/<name>-seed<seed>`, its own run directory sharing the run's
frozen-trunk caches (by key, so variants with the same trunk share one). The teacher ablation and
an ensemble teacher (`teacher.ensemble`) fit and read them there.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from core.config import Config, apply_overrides
from core.run_layout import RunPaths
from core.schema import build, to_dict

REFERENCE = "configured"


def teacher_variant_config(cfg: Config, name: str, seed: int) -> Config:
    """The config of one named teacher at a seed, as a single teacher (never an ensemble): the run's
    own config for the configured teacher at the run's seed, else the variant's, whose run directory
    is `run_dir/teachers/<name>-seed<seed>`. Makes no directory (the plan reads it too)."""
    if name == REFERENCE and seed == cfg.seed:
        return dataclasses.replace(cfg, teacher=dataclasses.replace(cfg.teacher, ensemble=""))
    overrides = cfg.experiment.teacher_variants.get(name, [])
    run_dir = RunPaths(cfg.run_dir).teacher_variant(name, seed)
    raw = apply_overrides(to_dict(cfg), [*overrides, f"run_dir={run_dir}", f"seed={seed}"])
    raw["teacher"]["ensemble"] = ""
    return build(Config, raw, f"experiment.teacher_variants.{name}")


def variant_run(cfg: Config, name: str, seed: int) -> Config:
    """`teacher_variant_config`, with the variant's run directory made and sharing the run's frozen caches."""
    variant = teacher_variant_config(cfg, name, seed)
    if variant.run_dir == cfg.run_dir:
        return variant
    root = RunPaths(cfg.run_dir)
    Path(variant.run_dir).mkdir(parents=True, exist_ok=True)
    root.features.mkdir(parents=True, exist_ok=True)
    _share_features(RunPaths(variant.run_dir).features, root.features.resolve())
    return variant


def _share_features(link: Path, target: Path) -> None:
    """Link a variant's feature cache to the run's. Every torchrun rank calls this at once, so the link
    is made or found (never checked then made); one that leads elsewhere is an error, not overwritten."""
    try:
        link.symlink_to(target, target_is_directory=True)
    except FileExistsError:
        if link.resolve() != target:
            found = f"a link to {link.resolve()}" if link.is_symlink() else "not a link"
            raise FileExistsError(f"{link}: a teacher variant's feature cache must link to the run's {target}, "
                                  f"but it is {found}; move it aside") from None


def fitted_teachers(cfg: Config) -> list[Config]:
    """The single teachers a run fits and scores with: its configured teacher, or each member of the
    ensemble `teacher.ensemble` names (at the run's seed)."""
    if not cfg.teacher.ensemble:
        return [cfg]
    return [teacher_variant_config(cfg, name, cfg.seed) for name in cfg.experiment.teacher_ensembles[cfg.teacher.ensemble]]
