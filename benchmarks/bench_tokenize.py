"""Tokenization throughput and peak memory on N synthetic visits, beside the shared references.

Generates a synthetic cohort, then runs the tokenize stage end to end (read + check Parquet,
split, fit on train, encode every visit, write shards) in a fresh child process, `--repeat`
times, and reports the median stage time, input events/s, output tokens/s, visits/s and the
child's peak RSS; then times the whole `ehr-ssl tokenize` command (interpreter start-up and
imports included), the figure a user sees. The reference tokenizers of
../shared/bench/ref_tokenize.py (a plain polars join-filter-group_by, and a per-visit pandas
loop) run on the same data for the ratio.

usage: python benchmarks/bench_tokenize.py --visits 100000 [--repeat 5] [--reference polars,pandas]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ehr_ssl.config import RARE_CODES
from ehr_ssl.data.synthetic import DEFAULT_COHORT_VERSION, generate_cohort, write_cohort

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REFERENCE = ROOT.parent / "shared" / "bench" / "ref_tokenize.py"

# Runs in the child: the stage as `ehr-ssl tokenize` runs it, timed without interpreter start-up.
CHILD = """
import json, sys, time
from pathlib import Path
started = time.perf_counter()
from ehr_ssl.config import TokenizeConfig, TokenizerConfig
from ehr_ssl.tokens.tokenize import tokenize_dataset
imported = time.perf_counter()
config = TokenizeConfig(tokenizer=TokenizerConfig(rare_codes=sys.argv[3]))
manifest = tokenize_dataset(Path(sys.argv[1]), Path(sys.argv[2]), config)
done = time.perf_counter()
tokens = sum(s["tokens"] for s in manifest["splits"].values())
print(json.dumps({"seconds": done - imported, "import_seconds": imported - started,
                  "tokens": tokens}))
"""


def run_child(args: list[str]) -> tuple[str, float, float]:
    """Run a child process; returns (stdout, wall seconds, peak RSS in MiB)."""
    started = time.perf_counter()
    process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    stdout = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"child failed ({process.returncode}): {' '.join(args)}")
    return stdout, time.perf_counter() - started, usage.ru_maxrss / 1024


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        text = Path("/proc/cpuinfo").read_text()
        cpu = re.search(r"model name\s*:\s*(.+)", text).group(1)
    except (OSError, AttributeError):
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB RAM, Python {platform.python_version()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--visits", type=int, default=100_000)
    parser.add_argument(
        "--cohort-version",
        type=int,
        default=DEFAULT_COHORT_VERSION,
        help="synthetic cohort version (1: the figures recorded before 2026-12-04 (fifth session))",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeat", type=int, default=5, help="runs of ours and of the polars reference (median)"
    )
    parser.add_argument(
        "--reference",
        default="polars",
        help="comma-separated references to run: polars, pandas (slow), or none",
    )
    parser.add_argument("--reference-script", type=Path, default=DEFAULT_REFERENCE)
    parser.add_argument(
        "--shuffle-events",
        action="store_true",
        help="store events in random row order (the synthetic writer stores them sorted by "
        "patient_id, time, code, as MEDS-style tables usually are)",
    )
    parser.add_argument(
        "--rare-codes", default="ancestor", choices=RARE_CODES, help="tokenizer.rare_codes"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-tokenize-"))
    try:
        data = work / "data"
        started = time.perf_counter()
        cohort = generate_cohort(args.visits, seed=args.seed, version=args.cohort_version)
        if args.shuffle_events:
            cohort.events = cohort.events.sample(fraction=1.0, shuffle=True, seed=args.seed)
        write_cohort(cohort, data)
        synth_seconds = time.perf_counter() - started
        n_events = cohort.events.height
        del cohort

        runs = []
        for i in range(args.repeat):
            stdout, wall, rss = run_child(
                [sys.executable, "-c", CHILD, str(data), str(work / f"tokens-{i}"), args.rare_codes]
            )
            runs.append({**json.loads(stdout), "wall_seconds": wall, "peak_rss_mib": rss})
            shutil.rmtree(work / f"tokens-{i}")
        # The command a user runs, start-up and imports included.
        cli_walls = []
        for i in range(args.repeat):
            out = work / f"cli-{i}"
            _, wall, _ = run_child(
                [
                    sys.executable,
                    "-m",
                    "ehr_ssl.cli",
                    "-q",
                    "tokenize",
                    str(data),
                    "--out",
                    str(out),
                    "--rare-codes",
                    args.rare_codes,
                ]
            )
            cli_walls.append(wall)
            shutil.rmtree(out)
        seconds = statistics.median(r["seconds"] for r in runs)
        tokens = runs[0]["tokens"]
        result = {
            "machine": machine(),
            "visits": args.visits,
            "events_stored": "shuffled" if args.shuffle_events else "sorted",
            "input_events": n_events,
            "output_tokens": tokens,
            "synth_seconds": round(synth_seconds, 2),
            "tokenize_seconds": round(seconds, 3),
            "cli_wall_seconds": round(statistics.median(cli_walls), 3),
            "input_events_per_s": round(n_events / seconds),
            "output_tokens_per_s": round(tokens / seconds),
            "visits_per_s": round(args.visits / seconds),
            "peak_rss_mib": round(max(r["peak_rss_mib"] for r in runs)),
            "references": {},
        }
        for name in [r for r in args.reference.split(",") if r and r != "none"]:
            if not args.reference_script.exists():
                print(f"skipping reference {name}: {args.reference_script} not found")
                continue
            # The pandas loop takes minutes: one run; the polars reference gets the same
            # number of runs as ours and its median too.
            timings, rss = [], 0.0
            for _ in range(1 if name == "pandas" else args.repeat):
                stdout, _, run_rss = run_child(
                    [sys.executable, str(args.reference_script), str(data), name]
                )
                figures = dict(re.findall(r"(\w+)=([\d.,]+)", stdout))
                timings.append(float(figures["seconds"]))
                rss = max(rss, run_rss)
            ref_seconds = statistics.median(timings)
            ref_events = int(figures["events_out"].replace(",", ""))
            result["references"][name] = {
                "runs": len(timings),
                "seconds": ref_seconds,
                "event_tokens_out": ref_events,
                "event_tokens_per_s": round(ref_events / ref_seconds),
                "peak_rss_mib": round(rss),
                "speedup_of_ehr_ssl": round(ref_seconds / seconds, 2),
            }
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
