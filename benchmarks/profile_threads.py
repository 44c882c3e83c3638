"""Run a Python module with cProfile in every thread it starts (the main thread included), then write the
merged statistics (pstats format). cProfile alone sees only the thread that enabled it; a gRPC server does its
work in pool threads and a writer thread.

    python benchmarks/profile_threads.py OUT.prof -m services.cli.main serve ...

The statistics are written when the module returns (for `serve`: after SIGTERM has stopped it); a thread still
running then contributes what it has recorded so far. Times are wall-clock per thread, so a thread waiting in
a C call (a lock, a socket, PostgreSQL) shows that wait under the builtin it waits in.
"""

import cProfile
import pstats
import runpy
import sys
import threading

_profiles: list[cProfile.Profile] = []
_original_run = threading.Thread.run


def _profiled_run(thread: threading.Thread) -> None:
    profile = cProfile.Profile()
    _profiles.append(profile)
    profile.enable()
    try:
        _original_run(thread)
    finally:
        profile.disable()


def main() -> None:
    if len(sys.argv) < 4 or sys.argv[2] != "-m":
        sys.exit("usage: profile_threads.py OUT.prof -m MODULE [ARGS...]")
    out, module = sys.argv[1], sys.argv[3]
    sys.argv = [module, *sys.argv[4:]]
    threading.Thread.run = _profiled_run
    main_profile = cProfile.Profile()
    main_profile.enable()
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
    finally:
        main_profile.disable()
        stats = pstats.Stats(main_profile)
        for profile in list(_profiles):
            try:
                stats.add(profile)
            except TypeError:   # a thread that ran no Python function: nothing recorded
                continue
        stats.dump_stats(out)


if __name__ == "__main__":
    main()
