"""Copy stdin to stdout, each line prefixed with the wall-clock time (seconds): litgpt's log lines carry none."""

import sys
import time

for line in sys.stdin:
    sys.stdout.write(f"{time.time():.3f} {line}")
    sys.stdout.flush()
