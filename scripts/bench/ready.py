"""Start-to-ready time of keyturn: spawn `keyturn serve`, wait for the "keyturn ready" log
line, stop it (SIGTERM, waited for); repeat. Prints `READY <runs> <median ms> <max ms>`.

usage: ready.py KEYTURN_BIN CONFIG RUNS
"""
import statistics
import subprocess
import sys
import time

binary, config, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
times = []
for _ in range(runs):
    start = time.monotonic()
    proc = subprocess.Popen(
        [binary, "serve", "--config", config],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    ready = False
    for line in proc.stderr:
        if "keyturn ready" in line:
            ready = True
            break
    elapsed = time.monotonic() - start
    proc.terminate()
    proc.communicate(timeout=30)
    if not ready:
        sys.exit(f"keyturn exited before it was ready (status {proc.returncode})")
    times.append(elapsed * 1000)
print(f"READY {runs} {statistics.median(times):.1f} {max(times):.1f}")
