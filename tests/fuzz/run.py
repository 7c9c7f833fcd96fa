"""`scripts/fuzz TARGET --seconds N`: one target under atheris (libFuzzer), in this process.

New interesting inputs go to the working corpus (`--corpus`, default `.fuzz/corpus/TARGET`);
the seeds in `tests/fuzz/corpus/TARGET` are read, never written. Crashes go to `--crashes`
(default `.fuzz/crashes/TARGET/`). `--replay` runs only the seeds (and the working corpus)
through the target, without atheris. Exit status: 0 clean, non-zero on a crash.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(REPO))
    from tests.fuzz.targets import INSTRUMENT, TARGETS, seeds, tolerant  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="scripts/fuzz", description=__doc__)
    parser.add_argument("target", nargs="?", choices=sorted(TARGETS))
    parser.add_argument("--list", action="store_true", help="list the targets")
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--corpus", type=Path, help="working corpus (written)")
    parser.add_argument("--crashes", type=Path, help="where crashing inputs go")
    parser.add_argument("--replay", action="store_true", help="only replay the corpora")
    parser.add_argument("--strict", action="store_true", help="known bugs are crashes too")
    parser.add_argument("--seed", type=int, default=0, help="libFuzzer -seed (0: random)")
    parser.add_argument("libfuzzer", nargs="*", help="extra libFuzzer flags, after --")
    args = parser.parse_args(argv)
    if args.list:
        for name, target in sorted(TARGETS.items()):
            doc = (target.run.__doc__ or "").strip().splitlines()[0]
            print(f"{name:14} {len(seeds(name)):3} seeds  {doc}")
        return 0
    if args.target is None:
        parser.error("a target, or --list")
    target = TARGETS[args.target]
    work = REPO / ".fuzz"
    corpus = args.corpus or work / "corpus" / target.name
    crashes = args.crashes or work / "crashes" / target.name
    seed_dir = REPO / "tests" / "fuzz" / "corpus" / target.name
    if args.replay:
        files = [*seeds(target.name), *(sorted(corpus.iterdir()) if corpus.is_dir() else [])]
        run = target.run if args.strict else tolerant(target.name, target.run)
        for path in files:
            run(path.read_bytes())
        print(f"{target.name}: {len(files)} inputs replayed")
        return 0
    import atheris  # noqa: PLC0415

    corpus.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    with atheris.instrument_imports(include=INSTRUMENT):  # type: ignore[attr-defined]
        import tests.fuzz.targets as instrumented  # noqa: PLC0415

        target.run(b"")  # imports every module the target reaches, instrumented
    run = instrumented.TARGETS[target.name].run
    if not args.strict:
        run = tolerant(target.name, run)
    flags = [
        sys.argv[0],
        f"-max_total_time={args.seconds}",
        f"-max_len={target.max_len}",
        f"-artifact_prefix={crashes}/",
        "-timeout=10",
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
        f"-seed={args.seed}",
        *args.libfuzzer,
        str(corpus),
        *([str(seed_dir)] if seed_dir.is_dir() else []),
    ]
    atheris.Setup(flags, run)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
