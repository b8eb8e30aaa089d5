"""`cmbench data`, `bench`, `check` and `list`: datasets, speed, a method's conformance, what exists."""

from __future__ import annotations


from .. import CmbenchError
from .common import data_args, hparams_of, positive_int


def cmd_data(args) -> int:
    from ..data import export

    if args.action == "list":
        print("\n".join(export.status()))
        return 0
    if not args.tasks:
        raise CmbenchError("data export: name the tasks to export (e.g. eurosat dtd)")
    for t in args.tasks:
        export.export(t)
    return 0


def cmd_bench(args) -> int:
    from ..bench import DEFAULT_METHODS, main_json, run_bench

    methods = [m for m in args.methods.split(",") if m] if args.methods else list(DEFAULT_METHODS)
    stream = () if args.stream_memory == "none" else tuple(m for m in args.stream_memory.split(",") if m)
    skip = () if args.suite_skip == "none" else tuple(m for m in args.suite_skip.split(",") if m)
    hparams = hparams_of(args.hparam)
    r = run_bench(
        methods,
        threads=args.threads,
        repeats=args.repeats,
        device=args.device,
        suite=args.suite,
        stream_memory=stream,
        suite_skip=skip,
        hparams=hparams,
        evaluation=not args.no_eval,
        model=args.model,
    )
    main_json(args.json, r)
    return 0


def cmd_check(args) -> int:
    from ..conformance import check
    from ..registry import discover

    names = args.methods or sorted(discover())
    bad = 0
    for name in names:
        problems = check(name)
        print(f"{name}: {'ok' if not problems else 'FAILED'}")
        for p in problems:
            print("  - " + p.replace("\n", "\n    "))
        bad += bool(problems)
    return 1 if bad else 0


def cmd_list(args) -> int:
    if args.what == "methods":
        from ..registry import discover

        for name, cls in sorted(discover().items()):
            hp = ", ".join(f"{k}={v!r}" for k, v in cls.defaults().items()) or "-"
            tag = " [reconstruction]" if cls.reconstruction else ""
            print(
                f"{name}{tag}\n  settings: {', '.join(cls.settings)}; data: {cls.data_access}; "
                f"hyperparameters: {hp}\n  paper: {cls.paper or '-'}"
            )
    else:  # read, not validated (validation imports every method, i.e. torch): a second, not ten
        import yaml

        from ..suite import suite_dirs

        for d in suite_dirs():
            for p in sorted(d.glob("*.yaml")):
                try:
                    s = yaml.safe_load(p.read_text())
                    print(
                        f"{p}: {s.get('setting', 'merge_stream')}, {len(s.get('tasks') or [])} tasks, "
                        f"{len(s.get('seeds') or [0])} seeds, {len(s.get('methods') or [])} methods"
                    )
                except (yaml.YAMLError, AttributeError, TypeError) as e:
                    print(f"{p}: unreadable YAML ({type(e).__name__})")
        print("(`cmbench run SUITE --dry-run` validates a suite and lists its jobs)")
    return 0


def add_data(sub) -> None:
    dt = sub.add_parser(
        "data",
        help="dataset status, and export of hub copies to image folders",
        description="`list`: each real dataset's state here (image folder, decoded cache, hub copy); "
        "`export TASK...`: write a hub copy as an image folder under the data root.",
    )
    dt.add_argument("action", choices=["list", "export"])
    dt.add_argument("tasks", nargs="*", help="export: CLIP task names (e.g. eurosat dtd)")
    data_args(dt)
    dt.set_defaults(fn=cmd_data)


def add_bench(sub) -> None:
    bn = sub.add_parser(
        "bench",
        help="merge-step time and memory per method on 88M parameters, "
        "bandwidth floor, evaluation img/s, suite wall time",
        description="Time each method's merge step on an 88M-parameter model (against the memory-bandwidth "
        "floor), measure its peak memory over a stream, evaluation throughput, and optionally a suite's "
        "cold and warm wall time.",
    )
    bn.add_argument("--methods", help="comma-separated methods (default: the data-free baselines)")
    bn.add_argument("--threads", type=positive_int, default=2, help="torch threads (default: 2)")
    bn.add_argument("--repeats", type=positive_int, default=3, help="timed merge steps per method (median reported)")
    bn.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    bn.add_argument(
        "--stream-memory",
        default="task_arithmetic,ties,magmax,opcm",
        help="methods whose merge-stream peak memory is measured at T = 8 and T = 20 "
        "(comma-separated, or none; default: %(default)s)",
    )
    bn.add_argument("--suite", help="also time `cmbench run SUITE --seeds 1` cold and warm (e.g. micro-digits-merge)")
    bn.add_argument(
        "--suite-skip",
        default="ode_m",
        help="methods or labels --suite leaves out (comma-separated, or none; default: %(default)s, "
        "whose micro jobs take 1–36 min each and are timed by their own results)",
    )
    bn.add_argument(
        "--hparam",
        action="append",
        default=[],
        metavar="METHOD.NAME=VALUE",
        help="override a method's hyperparameter (repeatable); METHOD.bench_samples=N: the random "
        "images a data-using method is handed (default 256)",
    )
    bn.add_argument(
        "--model",
        default="vit-b32",
        choices=["vit-b32", "flan-t5-base"],
        help="the model merged (random weights): CLIP ViT-B/32's image tower (88M) or Flan-T5-base (248M, "
        "data-free methods only; needs the text extra); default: %(default)s",
    )
    bn.add_argument("--no-eval", action="store_true", help="skip the evaluation-throughput figures")
    bn.add_argument("--json", help="also write the figures to this JSON file")
    bn.set_defaults(fn=cmd_bench)


def add_check(sub) -> None:
    ck = sub.add_parser(
        "check",
        help="run the conformance kit on methods (default: all)",
        description="Checks that a method does not modify its inputs, keeps keys/shapes/dtypes "
        "and integer tensors, is deterministic, respects its declared data access "
        "and has measurable storage.",
    )
    ck.add_argument("methods", nargs="*", help="method names (default: every discovered method)")
    ck.set_defaults(fn=cmd_check)


def add_list(sub) -> None:
    ls = sub.add_parser(
        "list",
        help="list methods or suites",
        description="`methods`: every method found (baselines/ and plugins) with its settings, data access, "
        "hyperparameters and paper; `suites`: the suite files in ./suites and the repository's.",
    )
    ls.add_argument("what", choices=["methods", "suites"])
    ls.set_defaults(fn=cmd_list)
