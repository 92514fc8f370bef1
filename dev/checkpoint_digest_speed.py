"""Measure how fast this machine computes the SHA-256 (and BLAKE2b) of a file read from disk, and print what the
digests of a checkpoint cost: one read of every byte when it is saved, and again when it is resumed or converted.

Example:

    python dev/checkpoint_digest_speed.py --size_mb 512 --checkpoint_gb 13.2
"""

import hashlib
import sys
import tempfile
import time
from pathlib import Path

# entry points import `lit_gpt` from the checkout
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lit_gpt.cli import check_command_line  # noqa: E402

check_command_line(__name__, __file__)  # a bad flag is refused before the imports below

from lit_gpt.files import file_sha256  # noqa: E402


def main(size_mb: int = 512, checkpoint_gb: float = 13.2) -> None:
    """Write a file of `size_mb` random bytes, digest it, and print MB/s and the cost of a checkpoint's digests.

    Args:
        size_mb: Size of the file measured, in MB (the page cache holds it: this is the hash's speed, not the disk's).
        checkpoint_gb: Size of the checkpoint to cost, in GB. TinyLlama's is about 13.2: 1.1B parameters in fp32,
            and AdamW's two moments of the same size.
    """
    if size_mb < 1 or not checkpoint_gb > 0:
        raise ValueError(f"--size_mb {size_mb} and --checkpoint_gb {checkpoint_gb} must be positive")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "random.bin"
        with open(path, "wb") as f:
            for _ in range(size_mb):
                f.write(bytes(hashlib.shake_256(str(time.perf_counter_ns()).encode()).digest(10**6)))
        for name, digest in (("sha256", file_sha256), ("blake2b", _blake2b)):
            digest(path)  # warm the page cache
            start = time.perf_counter()
            digest(path)
            speed = size_mb / (time.perf_counter() - start)
            seconds = checkpoint_gb * 1000 / speed
            print(f"{name}: {speed:,.0f} MB/s, {seconds:.0f} s for a {checkpoint_gb:g} GB checkpoint")


def _blake2b(path: Path) -> str:
    digest = hashlib.blake2b()
    with open(path, "rb") as f:
        while chunk := f.read(2**24):
            digest.update(chunk)
    return digest.hexdigest()


if __name__ == "__main__":
    from lit_gpt.cli import cli

    cli(main)
