"""Several processes and several nodes on CPU (gloo): full vs hybrid sharding, the external launchers (torchrun,
`fabric run`, SLURM's srun), sharded checkpoints, and the data each rank reads. Two "nodes" are two launcher
invocations on this machine, as they would be on two hosts that share a filesystem.
"""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_pretrain import SCRIPT, _env, metrics, model_weights

ROOT = Path(__file__).resolve().parents[1]
BLOCK = 16
N_SAMPLES = {"slimpajama/train": 48, "starcoder": 50, "slimpajama/val": 8}
# micro-llama on 16-token sequences; 4 sequences per optimizer step: one micro-batch on each of 4 processes
COMMON = [
    "--model_name", "micro-llama", "--block_size", str(BLOCK), "--accelerator", "cpu", "--precision", "32-true",
    "--global_batch_size", "4", "--micro_batch_size", "1", "--learning_rate", "3e-3", "--min_lr", "3e-4",
    "--warmup_steps", "1", "--logger_name", "csv", "--num_workers", "1", "--eval_iters", "1",
    "--max_steps", "2", "--save_interval", "1", "--eval_interval", "2",
]  # fmt: skip


def sample(source: int, index: int) -> torch.Tensor:
    """Sample `index` of source `source`: BLOCK + 1 tokens, the first of which names it."""
    tokens = (torch.arange(BLOCK + 1, dtype=torch.int32) * (7 + index) + 3 * source) % 500 + 1000
    tokens[0] = 10_000 * (source + 1) + index
    return tokens


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """litdata chunks of 4 samples each, one sample per (BLOCK + 1)-token item, as `TokensLoader` writes them."""
    from litdata.streaming.item_loader import TokensLoader
    from litdata.streaming.writer import BinaryWriter

    root = tmp_path_factory.mktemp("indexed-data")
    for source, (sub, n) in enumerate(N_SAMPLES.items()):
        (root / sub).mkdir(parents=True)
        writer = BinaryWriter(str(root / sub), chunk_size=(BLOCK + 1) * 4, item_loader=TokensLoader())
        for i in range(n):
            writer.add_item(i, sample(source, i))
        writer.done()
        writer.merge()
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_all(procs: list, what: str) -> str:
    """Wait for every process and return their output; on a failure, kill the others (they would wait for the
    missing rank) and report."""
    try:
        for proc in procs:
            proc.wait(timeout=300)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    logs = "\n".join(proc.stdout.read() for proc in procs)
    assert all(proc.returncode == 0 for proc in procs), f"{what} failed:\n{logs[-8000:]}"
    return logs


def start(cmd: list, env: dict) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


@pytest.mark.slow  # ~100 s on 2 cores: three launches of 4 processes, each importing lightning
def test_hybrid_sharding_on_two_nodes_matches_full_and_resumes_under_slurm(tmp_path, data_dir):
    args = [*COMMON, "--data_dir", str(data_dir)]
    full, hybrid, resumed = tmp_path / "full", tmp_path / "hybrid", tmp_path / "resumed"

    # full sharding over 4 processes on one node, started by Fabric itself
    cmd = [sys.executable, str(SCRIPT), *args, "--out_dir", str(full), "--devices", "4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    # hybrid sharding on 2 nodes × 2 devices, one launcher per node as on two hosts: node 0 through `fabric run`,
    # node 1 through torchrun (`fabric run` is torchrun with Fabric's settings: they join the same rendezvous)
    port = free_port()
    hybrid_args = [*args, "--out_dir", str(hybrid), "--devices", "2", "--num_nodes", "2", "--sharding", "hybrid"]
    fabric_run = [str(Path(sys.executable).parent / "fabric"), "run", "--accelerator", "cpu", "--devices", "2"]
    fabric_run += ["--num-nodes", "2", "--node-rank", "0", "--main-address", "127.0.0.1", "--main-port", str(port)]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "2"]
    torchrun += ["--node_rank", "1", "--master_addr", "127.0.0.1", "--master_port", str(port)]
    node0 = start([*fabric_run, str(SCRIPT), "--", *hybrid_args], _env())  # `--`: the script's flags, not fabric's
    node1 = start([*torchrun, str(SCRIPT), *hybrid_args], _env())
    logs = wait_all([node0, node1], "fabric run + torchrun")
    # the global batch is the job's: 4 sequences of 16 tokens per step, 1 micro-batch on each of the 4 processes
    assert "2 steps of 64 tokens (1 micro-batch of 1 per device;" in logs

    for key in ("loss", "grad_norm", "val_loss"):
        expected, actual = metrics(full, key), metrics(hybrid, key)
        assert expected.keys() == actual.keys() and expected, key
        for step in expected:
            assert actual[step] == pytest.approx(expected[step], rel=1e-5), (key, step)
    # a sharded checkpoint in which each weight is stored once, readable without a process group
    meta = torch.load(hybrid / "step-00000002.pth" / "meta.pt", weights_only=True)
    assert meta["hparams"]["sharding"] == "hybrid" and meta["hparams"]["world_size"] == 4
    weights_full = model_weights(full / "step-00000002.pth")
    weights_hybrid = model_weights(hybrid / "step-00000002.pth")
    assert weights_full.keys() == weights_hybrid.keys()
    # Adam's step is about lr * sign(gradient) whatever the gradient's size: where another summation order (another
    # sharding, or the AVX2 kernels of a CPU without AVX-512) flips the sign of a near-zero gradient, that weight
    # moves by up to 2 lr a step the other way. Such weights are rare; every other one agrees to float32 noise.
    bound = 2 * (3e-3 + 3e-3)  # two steps at no more than --learning_rate
    for name in weights_full:
        diff = (weights_hybrid[name] - weights_full[name]).abs()
        loose = diff > 2e-4 + 1e-4 * weights_full[name].abs()
        assert loose.sum() <= max(1, diff.numel() // 100_000) and diff.max() <= bound, (name, loose.sum(), diff.max())

    # resume the hybrid run from its step-1 checkpoint as srun would start it: 4 tasks, 2 per node
    port = free_port()
    cmd = [sys.executable, str(SCRIPT), *hybrid_args, "--out_dir", str(resumed)]
    cmd += ["--resume", str(hybrid / "step-00000001.pth")]
    tasks = []
    for rank in range(4):
        slurm = {"SLURM_JOB_NAME": "pretrain", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "4", "SLURM_NNODES": "2"}
        slurm.update(SLURM_NTASKS_PER_NODE="2", SLURM_PROCID=str(rank), SLURM_NODEID=str(rank // 2))
        slurm.update(SLURM_LOCALID=str(rank % 2), SLURM_NODELIST="127.0.0.1", MASTER_PORT=str(port))
        tasks.append(start(cmd, {**_env(), **slurm}))
    wait_all(tasks, "srun")
    assert metrics(resumed) == {2: metrics(hybrid)[2]}
    weights_resumed = model_weights(resumed / "step-00000002.pth")
    for name in weights_hybrid:
        assert torch.equal(weights_resumed[name], weights_hybrid[name]), name


RANK_SCRIPT = """
import json, sys
import torch.distributed as dist
sys.path.insert(0, {root!r})
from lit_gpt.data.loaders import train_dataloader

data_dir, out, block, batch_size, num_workers, seed = sys.argv[1:]
dist.init_process_group("gloo")  # litdata reads the rank and world size from the process group
read = {{}}
# one epoch of each source alone, through the script's loader (a weight of 0 never samples the other source)
for name, weights in (("slimpajama/train", (1.0, 0.0)), ("starcoder", (0.0, 1.0))):
    loader = train_dataloader(data_dir, weights, int(block), int(batch_size), int(num_workers), int(seed))
    read[name] = [batch[:, 0].tolist() for batch in loader]
# the first 8 batches of the weighted mix, as training reads them
loader = train_dataloader(data_dir, (0.7, 0.3), int(block), int(batch_size), int(num_workers), int(seed))
read["mix"] = [batch[:, 0].tolist() for batch, _ in zip(loader, range(8))]
with open(f"{{out}}/rank-{{dist.get_rank()}}.json", "w") as f:
    json.dump(read, f)
"""


@pytest.mark.parametrize("world_size", [2, 4])
def test_each_rank_reads_a_disjoint_part_of_each_source(tmp_path, data_dir, world_size):
    batch_size, num_workers = 2, 2
    port = free_port()
    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT.format(root=str(ROOT)))
    cmd = [sys.executable, str(script), str(data_dir), str(tmp_path), str(BLOCK), str(batch_size), str(num_workers)]
    cmd.append("42")
    env = {**_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world_size)}
    wait_all([start(cmd, {**env, "RANK": str(rank)}) for rank in range(world_size)], "data ranks")
    ranks = [json.loads((tmp_path / f"rank-{rank}.json").read_text()) for rank in range(world_size)]

    per_step = world_size * num_workers * batch_size
    for source, name in enumerate(("slimpajama/train", "starcoder")):
        seen = [i - 10_000 * (source + 1) for r in ranks for batch in r[name] for i in batch]
        assert len(seen) == len(set(seen)), f"{name}: a sample read twice in one epoch"
        assert len({len(r[name]) for r in ranks}) == 1, f"{name}: ranks read different numbers of batches"
        # every sample is read, except the n % (processes × workers × batch) left over (litdata's drop_last)
        n = N_SAMPLES[name]
        assert set(seen) <= set(range(n)) and len(seen) == n - n % per_step, (name, sorted(seen))
    mixed = [i for r in ranks for batch in r["mix"] for i in batch]
    assert len(mixed) == world_size * 8 * batch_size and len(set(mixed)) == len(mixed)
    assert {i // 10_000 for i in mixed} == {1, 2}  # both sources


def test_torchrun_with_other_devices_than_its_processes_is_refused(tmp_path):
    # Lightning used to fail with `IndexError: list index out of range` here
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd = [*torchrun, str(SCRIPT), "--model_name", "micro-llama", "--accelerator", "cpu", "--devices", "1"]
    cmd += ["--out_dir", str(tmp_path / "out"), "--data_dir", str(tmp_path / "data")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=_env())
    assert proc.returncode != 0
    message = (
        "error: torchrun started 2 processes, 2 on this node (WORLD_SIZE=2, LOCAL_WORLD_SIZE=2), but --devices 1 "
        "--num_nodes 1 makes 1: pass --devices 2 (torchrun's --nproc_per_node) and --num_nodes 1 (its --nnodes)"
    )
    assert proc.stderr.count(message) == 1, proc.stderr[-3000:]
    assert "IndexError" not in proc.stderr


ONCE_SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, {root!r})
from lit_gpt.training.fabric import L
from lit_gpt.files import CorruptFile
from lit_gpt.training.checkpoint import on_rank_zero, verify_checkpoint

checkpoint, log = Path(sys.argv[1]), Path(sys.argv[2])
fabric = L.Fabric(accelerator="cpu", devices=2, strategy="ddp")
fabric.launch()


def verify():
    with open(log, "a") as f:
        f.write(f"rank {{fabric.global_rank}} read it\\n")
    return verify_checkpoint(checkpoint)


try:
    on_rank_zero(fabric, verify)
except CorruptFile as e:
    print(f"rank {{fabric.global_rank}}: {{e}}", flush=True)
"""


def test_a_sharded_checkpoint_is_verified_by_rank_0_alone_and_every_rank_gets_its_verdict(tmp_path):
    """Every process of a sharded resume used to read every shard for its digest, the same bytes from the same disk
    (8 reads of a checkpoint on a node of 8 GPUs): rank 0 reads it, and every process raises its refusal."""
    from lit_gpt.files import write_checksums

    checkpoint = tmp_path / "step-00000002.pth"
    checkpoint.mkdir()
    (checkpoint / "__0_0.distcp").write_bytes(b"shard of rank 0")
    write_checksums(checkpoint)
    (checkpoint / "__0_0.distcp").write_bytes(b"shard of rank 1")  # a flipped bit
    script, log = tmp_path / "once.py", tmp_path / "read.txt"
    script.write_text(ONCE_SCRIPT.format(root=str(ROOT)))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run([*torchrun, str(script), str(checkpoint), str(log)], capture_output=True, text=True,
                          timeout=300, env=_env())  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert log.read_text() == "rank 0 read it\n"
    for rank in (0, 1):
        assert f"rank {rank}: {checkpoint / '__0_0.distcp'} is corrupt" in proc.stdout, proc.stdout
