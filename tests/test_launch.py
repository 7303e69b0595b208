"""``lvod train`` over several machines: the torchrun command it builds, and the SLURM
example that runs it (issue 13, item 12)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lvod.engine.train import node_launch_args, split_endpoint, torchrun_command

REPO = Path(__file__).resolve().parents[1]
TAIL = ["-m", "lvod.cli", "train", "c.toml", "train.lr=0.1", "--work-dir", "w"]


def test_single_machine_command_is_unchanged():
    assert torchrun_command("c.toml", "w", 4, False, ["train.lr=0.1"]) == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "4",
        *TAIL,
    ]
    assert torchrun_command("c.toml", "w", 4, False, ["train.lr=0.1"], nnodes=1) == torchrun_command(
        "c.toml", "w", 4, False, ["train.lr=0.1"]
    )
    assert node_launch_args("w") == []


@pytest.mark.parametrize("rank", [0, 1])
def test_two_machines_by_four_gpus_static_rendezvous(rank):
    head = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "4"]
    nodes = ["--nnodes", "2", "--node_rank", str(rank), "--master_addr", "gpu-node-07", "--master_port", "29500"]
    cmd = torchrun_command(
        "c.toml", "w", 4, False, ["train.lr=0.1"], nnodes=2, node_rank=rank, master_addr="gpu-node-07"
    )
    assert cmd == [*head, *nodes, *TAIL]
    # the same meeting point given as torchrun's endpoint HOST[:PORT] (what tools/slurm_train.sh passes)
    kw = dict(nnodes=2, node_rank=rank)
    assert torchrun_command("c.toml", "w", 4, False, ["train.lr=0.1"], rdzv_endpoint="gpu-node-07", **kw) == cmd
    moved = torchrun_command("c.toml", "w", 4, True, [], rdzv_endpoint="gpu-node-07:29511", **kw)
    assert moved[5:13] == [*nodes[:-1], "29511"] and moved[-1] == "--resume"
    assert torchrun_command("c.toml", "w", 4, False, [], master_addr="10.0.0.5", master_port=1234, **kw)[5:13] == [
        *nodes[:5],
        "10.0.0.5",
        "--master_port",
        "1234",
    ]


def test_two_machines_c10d_rendezvous():
    cmd = torchrun_command("c.toml", "runs/fgfa_2x4", 4, False, [], nnodes=2, rdzv_endpoint="gpu-node-07")
    assert cmd[3:] == [
        "--nproc_per_node",
        "4",
        "--nnodes",
        "2",
        "--rdzv_backend",
        "c10d",
        "--rdzv_endpoint",
        "gpu-node-07:29400",
        "--rdzv_id",
        "lvod-fgfa_2x4",
        "-m",
        "lvod.cli",
        "train",
        "c.toml",
        "--work-dir",
        "runs/fgfa_2x4",
    ]
    assert node_launch_args("w", nnodes=3, rdzv_endpoint="[::1]:6000", rdzv_id="job42")[-4:] == [
        "--rdzv_endpoint",
        "[::1]:6000",
        "--rdzv_id",
        "job42",
    ]


def test_torchrun_reads_the_command_as_meant():
    """The installed torchrun's own parser takes the argv: nodes, rank, meeting point, module."""
    from torch.distributed.run import get_args_parser, get_rdzv_endpoint

    cmd = torchrun_command("c.toml", "w", 4, False, [], nnodes=2, node_rank=1, rdzv_endpoint="gpu-node-07:29511")
    args = get_args_parser().parse_args(cmd[3:])
    assert (args.nnodes, args.nproc_per_node, args.node_rank, args.rdzv_backend) == ("2", "4", 1, "static")
    assert get_rdzv_endpoint(args) == "gpu-node-07:29511"
    assert (args.module, args.training_script, args.training_script_args) == (
        True,
        "lvod.cli",
        ["train", "c.toml", "--work-dir", "w"],
    )
    c10d = get_args_parser().parse_args(torchrun_command("c.toml", "w", 4, False, [], nnodes=2, rdzv_endpoint="h")[3:])
    assert (c10d.rdzv_backend, c10d.rdzv_endpoint, c10d.rdzv_id) == ("c10d", "h:29400", "lvod-w")


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        ({"nnodes": 2}, "say where the machines meet"),
        ({"nnodes": 2, "master_addr": "h"}, "needs --node-rank"),
        ({"nnodes": 2, "node_rank": 2, "master_addr": "h"}, r"--node-rank 2: must be in 0\.\.1"),
        ({"nnodes": 2, "master_addr": "h", "rdzv_endpoint": "h:1"}, "give one"),
        ({"nnodes": 2, "rdzv_endpoint": "h", "master_port": 5}, "--master-port goes with --master-addr"),
        ({"nnodes": 2, "node_rank": 0, "rdzv_endpoint": "h", "rdzv_id": "x"}, "--rdzv-id goes with a c10d"),
        ({"node_rank": 0, "master_addr": "h"}, r"go\(es\) with --nnodes N > 1"),
        ({"nnodes": 0}, "1 or more"),
    ],
)
def test_launch_options_that_do_not_go_together_are_refused(nodes, message):
    with pytest.raises(ValueError, match=message):
        node_launch_args("w", **nodes)


def test_split_endpoint():
    assert split_endpoint("node1:29500") == ("node1", 29500)
    assert split_endpoint("node1") == ("node1", None)
    assert split_endpoint("[fe80::1]:29500") == ("[fe80::1]", 29500)
    assert split_endpoint("fe80::1") == ("fe80::1", None)


@pytest.fixture
def launches(monkeypatch, tmp_path):
    """``lvod train`` with ``subprocess.call`` recorded instead of run; returns the list."""
    from lvod import cli

    calls = []
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    (tmp_path / "c.toml").write_text('name = "tiny"\n')
    monkeypatch.chdir(tmp_path)
    return calls


def test_lvod_train_launches_torchrun_for_several_machines(launches, capsys):
    from lvod.cli import main

    args = ["train", "c.toml", "--work-dir", "w", "--gpus", "4", "--nnodes", "2", "--node-rank", "1"]
    assert main([*args, "--master-addr", "gpu-node-07", "train.lr=0.1"]) == 0
    static = ["--nnodes", "2", "--node_rank", "1", "--master_addr", "gpu-node-07", "--master_port", "29500"]
    assert launches[-1] == [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "4", *static, *TAIL]
    assert "launching: " in capsys.readouterr().out
    # one GPU per machine still needs torchrun
    assert main(["train", "c.toml", "--work-dir", "w", "--nnodes", "2", "--rdzv-endpoint", "h:7"]) == 0
    assert launches[-1][3:11] == [
        "--nproc_per_node",
        "1",
        "--nnodes",
        "2",
        "--rdzv_backend",
        "c10d",
        "--rdzv_endpoint",
        "h:7",
    ]
    # the single-machine call is what it was
    assert main(["train", "c.toml", "--work-dir", "w", "--gpus", "2"]) == 0
    assert launches[-1] == torchrun_command("c.toml", Path("w"), 2, False, [])

    n = len(launches)
    assert main(["train", "c.toml", "--gpus", "4", "--nnodes", "2"]) == 2
    assert "say where the machines meet" in capsys.readouterr().err and len(launches) == n


@pytest.mark.skipif(sys.platform == "win32", reason="a bash script")
def test_slurm_script_starts_one_lvod_train_per_node(tmp_path, launches):
    """tools/slurm_train.sh under stand-ins for srun and scontrol: each node's ``lvod train``
    gets its rank and the first node as meeting point, and launches the right torchrun."""
    from lvod.cli import main

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stubs = {
        # srun: run the task once per node, as SLURM does with SLURM_NODEID set
        "srun": 'while [ "$1" != bash ]; do shift; done\n'
        'for ((i = 0; i < SLURM_NNODES; i++)); do SLURM_NODEID=$i "$@" || exit 1; done\n',
        "scontrol": 'test "$1 $2 $3" = "show hostnames gpu-node-[07-08]" && printf "gpu-node-07\\ngpu-node-08\\n"\n',
        "fake-lvod": 'printf "%s\\n" "$@" > "$ARGS_DIR/node$SLURM_NODEID"\n',
    }
    for name, body in stubs.items():
        (bin_dir / name).write_text("#!/usr/bin/env bash\nset -eu\n" + body)
        (bin_dir / name).chmod(stat.S_IRWXU)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": "gpu-node-[07-08]",
        "SLURM_NNODES": "2",
        "SLURM_GPUS_ON_NODE": "4",
        "LVOD": "fake-lvod",
        "ARGS_DIR": str(tmp_path),
    }
    script = REPO / "tools" / "slurm_train.sh"
    done = subprocess.run(
        ["bash", str(script), "c.toml", "w", "train.lr=0.1"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "2 nodes x 4 GPUs, rendezvous at gpu-node-07:29500" in done.stdout
    for rank in (0, 1):
        argv = (tmp_path / f"node{rank}").read_text().splitlines()
        assert argv[:5] == ["train", "c.toml", "train.lr=0.1", "--work-dir", "w"]
        assert main(argv) == 0
        static = ["--nnodes", "2", "--node_rank", str(rank), "--master_addr", "gpu-node-07", "--master_port", "29500"]
        assert launches[-1] == [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "4", *static, *TAIL]

    usage = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "usage: sbatch" in usage.stderr
