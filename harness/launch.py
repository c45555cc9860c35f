"""Launching `bench run` in several processes: `--shard I/N` (this process runs every N-th
cell), `--jobs N` (N one-thread shards on this machine, their logs in <out>/logs/) and
`--nproc N` (this command again under torchrun)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from flowarena.core.rundir import RunDir
from flowarena.harness.oneline import BadInput


def parse_shard(text: str | None) -> tuple[int, int]:
    """`--shard I/N` as (I, N); (1, 1) when absent."""
    if text is None:
        return 1, 1
    i, _, n = text.partition("/")
    if not (i.isdigit() and n.isdigit() and 1 <= int(i) <= int(n)):
        raise BadInput(f"--shard {text!r} must be I/N with 1 <= I <= N, e.g. 1/4")
    return int(i), int(n)


JOB = "FLOWARENA_JOB"  # set in the processes `bench run --jobs` starts


def run_jobs(jobs: int, out: Path, cells: int, reference: str | None) -> None:
    """This `bench run` as `jobs` shards at once (one thread each), their output in out/logs/;
    the run's progress from the cells' result files; then the report of all of them."""
    import signal
    import subprocess
    import sys
    import time

    from flowarena.harness.run.experiment import time_left
    from flowarena.reports.report import build_report

    args = argv_without("--jobs", "--out", "-o")
    rundir = RunDir(out)
    rundir.logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, JOB: "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    finished = rundir.finished
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
            cmd = [sys.executable, "-m", "flowarena.harness", *args, "--out", str(out),
                   "--shard", f"{k}/{jobs}"]
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
    build_report(out, reference)


def argv_without(*options: str) -> list[str]:
    """This command line's arguments less `options` and their values (to launch it again)."""
    import sys

    args, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a in options:
            skip = True
        elif not a.startswith(tuple(f"{o}=" for o in options)):
            args.append(a)
    return args


def relaunch(nproc: int) -> int:
    """This `bench run` again, without --nproc, as `torchrun --standalone --nproc_per_node N`."""
    import subprocess
    import sys

    args = argv_without("--nproc")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "flowarena.harness", *args]
    return subprocess.run(cmd).returncode
