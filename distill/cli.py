"""Command line: `itr-distill <stage>` for each stage, `run CONFIG` for the chain, `demo` for the default."""
from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys

from core.config import STUDENT_VARIANTS, Config, ConfigError, load_config, save_config
from core.run_layout import RunPaths
from eval.compare import ReportMissing
from export.runtime.search import add_arguments as add_search_arguments
from export.runtime.serve import add_arguments as add_serve_arguments

log = logging.getLogger("itr_distill")


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        import transformers
    except ImportError:  # the torch-free runtime install (`search`, `serve`)
        return

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _setup_logging() -> None:
    """Our messages at INFO on stderr; libraries stay at their WARNING default."""
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def _add_config_args(p: argparse.ArgumentParser, config_required: bool = False) -> None:
    if config_required:
        p.add_argument("config", help="YAML config file")
    else:
        p.add_argument("config", nargs="?", help="YAML config (default: <run-dir>/config.yaml, else the embedded default)")
    p.add_argument("--run-dir", help="run directory (overrides run_dir in the config)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set teacher.train.epochs=3 (repeatable)")
    p.add_argument("--force", action="store_true", help="redo the stage even if its output is up to date")
    _add_skip_bad(p)


def _add_skip_bad(p: argparse.ArgumentParser) -> None:
    p.add_argument("--skip-bad", action="store_true",
                   help="leave bad images (unreadable, missing, too few captions...) out instead of stopping, and "
                        "list them in <run-dir>/bad_data.json (= --set data.skip_bad=true)")


def _add_resume(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true",
                   help="continue interrupted trainings from their latest valid checkpoint (same result as uninterrupted)")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="itr-distill", description=__doc__)
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = ap.add_subparsers(dest="command", required=True)
    _add_config_args(sub.add_parser("data", help="generate (synthetic) and check the dataset splits"))
    teacher = sub.add_parser("teacher", help="teacher stages").add_subparsers(dest="teacher_command", required=True)
    fit = teacher.add_parser("fit", help="fit the teacher (SCAN / IMRAM: VSE++ hinge; cross-encoder: + hard-negative lists)")
    _add_config_args(fit)
    _add_resume(fit)
    score = teacher.add_parser("score", help="score a split into a teacher score cache (all pairs, or each query's "
                                             "top-K candidates; the top-K job resumes and shards under torchrun)")
    _add_config_args(score)
    score.add_argument("--split", default="train", choices=["train", "val", "test"])
    score.add_argument("--cache", default="all-pairs", choices=["all-pairs", "top-k"],
                       help="all-pairs: every image with every caption; top-k: scores.top_k candidates per query "
                            "from scores.generator")
    tokens = teacher.add_parser("tokens", help="encode a split into the teacher's token store (read by online KD and "
                                               "every scorer); shards over torchrun ranks")
    _add_config_args(tokens)
    tokens.add_argument("--split", default="train", choices=["train", "val", "test"])
    plan = sub.add_parser("plan", help="print what every stage of `run` will read, write, hold in memory and score, "
                                       "and whether it fits the limits (runs nothing)")
    _add_config_args(plan, config_required=True)
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    distill = sub.add_parser("distill", help="train one student")
    _add_config_args(distill)
    _add_resume(distill)
    distill.add_argument("--variant", default="distilled", choices=list(STUDENT_VARIANTS),
                         help="distilled: the configured student; baseline: contrastive only; kd, cached-kd, "
                              "selfalign, queue: contrastive plus that component alone (the ablation's rows)")
    distill.add_argument("--seed", type=int, help="seed (default: the config's seed)")
    pack = sub.add_parser("pack", help="pack the students of several seeds into one dual encoder (their embeddings "
                                       "side by side, weights chosen on the selection split): students/VARIANT-pack")
    _add_config_args(pack)
    pack.add_argument("--variant", choices=list(STUDENT_VARIANTS), default="distilled")
    pack.add_argument("--seeds", type=int, nargs="+", help="the members' seeds (default: experiment.seeds)")
    export = sub.add_parser("export", help="export a student to ONNX behind the parity gate")
    _add_config_args(export)
    export.add_argument("--student", help="student directory (default: distilled student of the first seed)")
    _add_config_args(sub.add_parser("eval", help="evaluate teacher, students and ONNX student"))
    _add_config_args(sub.add_parser("bench", help="latency benchmark of a run; `bench teacher [options]`: teacher "
                                                  "scoring speed against the per-caption loop and the matmul floor; "
                                                  "`bench input CONFIG [options]`: the training input pipeline's "
                                                  "images/s against the model step's"))
    ablate = sub.add_parser("ablate", help="train every student variant (contrastive only; + in-batch KD; + cached KD; "
                                           "+ SelfAlign; + momentum queues; all) over the seeds and write the table")
    _add_config_args(ablate, config_required=True)
    _add_resume(ablate)
    ablate.add_argument("--variants", nargs="+", choices=list(STUDENT_VARIANTS),
                        help="rows to train (default: all of them)")
    teachers = sub.add_parser("ablate-teachers", help="fit each teacher variant of experiment.teacher_variants (and "
                              "the configured teacher) and write the table of their accuracy on the eval split")
    _add_config_args(teachers, config_required=True)
    _add_resume(teachers)
    teachers.add_argument("--variants", nargs="+", help="only these variants (default: all, 'configured' first)")
    teachers.add_argument("--seeds", nargs="+", type=int, help="seeds (default: experiment.seeds)")
    report = sub.add_parser("report", help="write report.md and report.json of a run")
    report.add_argument("run_dir")
    compare = sub.add_parser("compare", help="one table of the report systems of several runs (reads each run's report.json)")
    compare.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    compare.add_argument("--csv", metavar="FILE", help="also write the rows as CSV (numbers as numbers, each mean beside its std)")
    compare.add_argument("--markdown", metavar="FILE", help="also write the table to a Markdown file")
    run = sub.add_parser("run", help="run every stage of a config")
    _add_config_args(run, config_required=True)
    _add_resume(run)
    search = sub.add_parser("search", help="query an exported student (torch-free): text->image or image->text")
    add_search_arguments(search)
    serve = sub.add_parser("serve", help="a search page and JSON API over an exported student (torch-free; "
                                         "needs the serve extra)")
    add_serve_arguments(serve)
    demo = sub.add_parser("demo", help="run every stage on the embedded default (synthetic scenes)")
    demo.add_argument("--run-dir", default=None, help="run directory (default: runs/demo)")
    demo.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    demo.add_argument("--force", action="store_true")
    _add_resume(demo)
    _add_skip_bad(demo)
    return ap


def resolve_config(args: argparse.Namespace) -> Config:
    """Config file (or the run dir's saved config, or the default), then --run-dir and --set."""
    path = getattr(args, "config", None)
    if path is None and args.command != "demo" and args.run_dir and RunPaths(args.run_dir).config.is_file():
        path = RunPaths(args.run_dir).config
    overrides = list(args.overrides) + ([f"run_dir={args.run_dir}"] if args.run_dir else [])
    overrides += ["data.skip_bad=true"] if args.skip_bad else []
    return load_config(path, overrides)


def dispatch(args: argparse.Namespace, command_line: str) -> None:
    if args.command == "compare":  # reads report.json files only: no torch
        from eval.compare import compare

        print(compare(args.run_dirs, args.csv, args.markdown), end="")
        return
    if args.command == "search":  # before importing the stages: search must work without torch
        from export.runtime.search import main as search_main

        search_main(args)
        return
    if args.command == "serve":  # likewise torch-free, before the stages import
        from export.runtime.serve import main as serve_main

        serve_main(args)
        return
    from distill import stages
    from distill.pipeline import run_pipeline
    from distill.plan import PlanError

    if args.command == "report":
        stages.stage_report(args.run_dir, command_line)
        return
    cfg = resolve_config(args)
    if args.command == "plan":
        from distill.plan import make_plan

        plan = make_plan(cfg)
        print(json.dumps(plan.to_dict(), indent=2) if args.json else plan.table())
        if plan.problems:
            raise PlanError("the plan exceeds its limits (see above)")
        return
    if args.command in ("run", "demo"):
        run_pipeline(cfg, command_line, args.force, args.resume)
        return
    save_config(cfg, RunPaths(cfg.run_dir).config)
    if args.command == "data":
        stages.stage_data(cfg, args.force)
    elif args.command == "teacher" and args.teacher_command == "fit":
        stages.stage_teacher_fit(cfg, args.force, args.resume)
    elif args.command == "teacher" and args.teacher_command == "tokens":
        stages.stage_teacher_tokens(cfg, args.split, args.force)
    elif args.command == "teacher" and args.cache == "top-k":
        stages.stage_teacher_topk(cfg, args.split, args.force)
    elif args.command == "teacher":
        stages.stage_teacher_score(cfg, args.split, args.force)
    elif args.command == "distill":
        from distill.student_stage import stage_distill

        stage_distill(cfg, args.variant, args.seed, args.force, args.resume)
    elif args.command == "ablate":
        from core.distributed import ranks_from_env
        from distill.ablation import stage_ablate

        stage_ablate(cfg, command_line, args.variants, args.force, args.resume)
        report = RunPaths(cfg.run_dir).report_data
        # the run's report gains the table (rank 0 writes it); it keeps the command that made the rest
        if report.is_file() and ranks_from_env().is_main:
            stages.stage_report(cfg.run_dir, json.loads(report.read_text(encoding="utf-8"))["command"])
    elif args.command == "ablate-teachers":
        from distill.teacher_ablation import stage_ablate_teachers

        stage_ablate_teachers(cfg, command_line, args.variants, args.seeds, args.force, args.resume)
    elif args.command == "pack":
        from distill.packing import stage_pack

        stage_pack(cfg, args.variant, args.seeds, args.force)
    elif args.command == "export":
        stages.stage_export(cfg, args.student, args.force)
    elif args.command == "eval":
        stages.stage_eval(cfg)
    elif args.command == "bench":
        stages.stage_bench(cfg)


def bench_input(argv: list[str]) -> int:
    """`itr-distill bench input`: the config's train split, student and `student.train` settings, timed by
    `eval.input_bench` (input pipeline per worker count and feeding, then the model step)."""
    import torch

    from core.devices import resolve_device
    from distill.models import feature_dim, new_model, text_source
    from distill.stages import load_split
    from distill.terms import student_objective
    from distill.variants import variant_config
    from eval.input_bench import parser as input_parser
    from eval.input_bench import run_input_bench, write_results

    args = input_parser().parse_args(argv)
    cfg = load_config(args.config, list(args.overrides) + ([f"run_dir={args.run_dir}"] if args.run_dir else []))
    paths, settings = RunPaths(cfg.run_dir), cfg.student.train
    train = load_split(cfg, "train")
    torch.manual_seed(cfg.seed)
    student = new_model("student", cfg.student, text_source(paths, cfg.student.text_tower, train), feature_dim(train))
    preprocess = student.image_tower.preprocess()
    if preprocess is None:
        raise ValueError(f"{train.source}: precomputed region features have no image decoding to time")
    workers = args.workers or sorted({0, settings.workers()})
    objective = student_objective(variant_config(cfg, "baseline")) if args.steps > 0 else None
    result = run_input_bench(train, preprocess, student.tokenize, settings, paths.images, workers, args.batches,
                             student if objective is not None else None, objective, resolve_device(cfg.device),
                             args.steps, args.draft, cfg.seed, args.rounds)
    print(write_results(result, args.out, "itr-distill bench input " + " ".join(shlex.quote(a) for a in argv)))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["rehearse"]:  # the scale rehearsal: generates a set, runs `run` on it, writes its result files
        from distill.rehearsal import main as rehearse_main

        return rehearse_main(argv[1:])
    if argv[:2] == ["bench", "teacher"]:  # its own options, no run directory
        from eval.teacher_bench import main as teacher_bench_main

        return teacher_bench_main(argv[2:])
    if argv[:2] == ["bench", "input"]:  # its own options: the input pipeline and the model step, no stage runs
        _setup_logging()
        _quiet_libraries()
        try:
            return bench_input(argv[2:])
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except (ValueError, OSError, RuntimeError, ImportError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    args = parser().parse_args(argv)
    if args.command == "demo" and args.run_dir is None:
        args.run_dir = "runs/demo"
    _setup_logging()
    _quiet_libraries()
    command_line = "itr-distill " + " ".join(shlex.quote(a) for a in argv)
    try:
        dispatch(args, command_line)
    except (ConfigError, ReportMissing) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, OSError, RuntimeError, ImportError) as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if "core.distributed" in sys.modules:  # only a stage run under torchrun joined a group; `search` never imports torch
        sys.modules["core.distributed"].leave_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
