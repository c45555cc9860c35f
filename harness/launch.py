"""Where `bench run` runs: in this process (`--shard I/N`: every N-th cell from the I-th), as N
one-thread jobs on this machine (`--jobs N`, their logs in <out>/logs/), or as N processes under
torchrun (`--nproc N`). Every worker starts from the run's resolved specification, which its
parent wrote to the run directory (`python -m flowarena.harness.launch SPEC I/N`), never from a
command line edited for it; a worker's errors are one line, as the command's are."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import typer

from flowarena.core.rundir import RunDir
from flowarena.harness.oneline import BadInput, friendly
from flowarena.harness.run.experiment import run_experiment, time_left
from flowarena.harness.run.spec import RunSpec


def parse_shard(text: str | None) -> tuple[int, int]:
    """`--shard I/N` as (I, N); (1, 1) when absent."""
    if text is None:
        return 1, 1
    i, _, n = text.partition("/")
    if not (i.isdigit() and n.isdigit() and 1 <= int(i) <= int(n)):
        raise BadInput(f"--shard {text!r} must be I/N with 1 <= I <= N, e.g. 1/4")
    return int(i), int(n)


def launch(spec: RunSpec, shard: str | None = None, jobs: int | None = None, nproc: int = 1) -> None:
    """Run `spec` the way the command asks: here, as `jobs` shards, or on `nproc` processes."""
    part = parse_shard(shard)
    if jobs is not None:
        if shard is not None or nproc > 1:
            raise BadInput("--jobs starts shards of its own: give it without --shard and --nproc")
        run_jobs(spec, jobs)
    elif nproc > 1 and "WORLD_SIZE" not in os.environ:  # not yet under torchrun: start it
        code = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                               f"--nproc_per_node={nproc}", *_worker(spec, part)]).returncode
        if code:
            raise typer.Exit(code)  # the ranks said why
    else:  # one process, or a rank of a torchrun / accelerate launch the user started
        run_experiment(spec, shard=part)


def reports_here() -> bool:
    """Whether this process prints the run's summary: all but the ranks > 0 of a torchrun."""
    return int(os.environ.get("RANK", "0")) == 0


def _worker(spec: RunSpec, shard: tuple[int, int]) -> list[str]:
    """The worker's `-m` arguments; the spec goes to a file of this launch in <out>/logs/."""
    path = RunDir(spec.out).logs / f"spec-{os.getpid()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    return ["-m", "flowarena.harness.launch", str(spec.write(path)), f"{shard[0]}/{shard[1]}"]


def run_jobs(spec: RunSpec, jobs: int) -> None:
    """`spec` as `jobs` shards at once (one thread each), their output in out/logs/; the run's
    progress from the cells' result files; then the report of all of them."""
    from flowarena.reports.report import build_report

    rundir, cells = RunDir(spec.out), len(spec.methods) * spec.seeds
    rundir.logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    mine = {(spec.model, m, s) for m in spec.methods for s in range(spec.seeds)}
    finished = partial(rundir.finished, mine)  # this command's cells, not the run's others
    t0, before = time.perf_counter(), finished()
    shown = before
    procs = []
    # Ctrl-C, or a scheduler's SIGTERM to this process alone, ends the jobs too: they are this
    # process's children and would train on. The handlers only note the stop, so that no signal
    # lands inside a Popen whose child has started but is not yet in `procs`.
    stops: list[int] = []

    def note_stop(signum, _frame) -> None:
        stops.append(signum)

    previous = {s: signal.signal(s, note_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for k in range(1, jobs + 1):
            # appended to, never truncated: a refused second command on a directory in use, or a
            # resumption, must not wipe the logs of the jobs that ran (or still run) there
            log = open(rundir.job_log(k, jobs), "a")  # noqa: SIM115 - open while the job runs
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')}: job {k} of {jobs} starts ---\n")
            log.flush()
            cmd = [sys.executable, *_worker(spec, (k, jobs))]
            procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log))
        while not stops and any(proc.poll() is None for proc, _ in procs):
            time.sleep(0.5)
            if (done := finished()) != shown:
                shown, elapsed = done, time.perf_counter() - t0
                typer.echo(f"{done}/{cells} cells done; {time_left(elapsed, done - before, cells - done)}",
                           err=True)
        if stops:
            for proc, _ in procs:
                proc.terminate()  # every write is atomic and a stale cell lock is taken over on resume
            for proc, log in procs:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                log.close()
            typer.echo(f"error: stopped with {finished()}/{cells} cells done; the same command resumes the "
                       "run", err=True)
            raise typer.Exit(130)  # 128 + SIGINT, the shell's code for an interrupted command
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    for k, (proc, log) in enumerate(procs, start=1):
        log.close()
        if proc.returncode:
            path = rundir.job_log(k, jobs)
            lines = [ln.strip("│╭╮╰╯─ ") for ln in path.read_text().splitlines()]  # typer's boxes too
            last = ([ln for ln in lines if ln] or [""])[-1]
            why = last.removeprefix("error: ")
            raise BadInput(f"job {k} of {jobs} stopped (exit {proc.returncode}): {why} (its log: {path})")
    build_report(spec.out, spec.reference)


def main(args: list[str] | None = None) -> None:
    """A worker: `python -m flowarena.harness.launch SPEC I/N` runs shard I/N of the spec."""
    spec_path, shard = ([*(sys.argv[1:] if args is None else args)] + [None, None])[:2]
    if spec_path is None:
        sys.exit("error: usage: python -m flowarena.harness.launch SPEC [I/N] (`bench run` starts it)")

    @friendly
    def run() -> None:  # named as the command: a SIGTERM's line says the run resumes
        run_experiment(RunSpec.read(Path(spec_path)), shard=parse_shard(shard))

    try:
        run()
    except typer.Exit as e:
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
