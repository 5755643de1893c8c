"""Weights & Biases, tested with the real package offline (WANDB_MODE=offline, no network): a run
with --wandb-project writes an offline W&B run of its metrics, a resumed run goes on logging to
the same W&B run, and wandb is never required."""

import csv
import json
import sys

import pytest

from gprl import cli
from gprl.algos import PPOConfig
from gprl.trainer import RunConfig, train

wandb_pb = pytest.importorskip("wandb.proto.wandb_internal_pb2")

RUN = {"env": "gprl/ContextualTarget-v0", "total_steps": 512, "num_envs": 4}
RUN |= {"checkpoint_every": 256, "progress": False}
PPO = PPOConfig(rollout_steps=32, num_minibatches=4)
LOG_BLOCK = 32768
HEADER = 7
TIMING_COLUMNS = {"wall_time", "steps_per_second", "_timestamp", "_runtime"}


def wandb_records(path):
    """The protobuf records of a .wandb file: a 7-byte header, then a LevelDB-style log of 32 KiB
    blocks, each record in chunks of (checksum 4, length 2, kind 1, payload); kind 1 is a whole
    record, 2/3/4 its first/middle/last chunk."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, position = [], b"", HEADER
    while position + HEADER <= len(data):
        room = LOG_BLOCK - position % LOG_BLOCK
        if room < HEADER:  # a block's tail too short for a chunk header is padding
            position += room
            continue
        length = int.from_bytes(data[position + 4 : position + 6], "little")
        kind = data[position + 6]
        pending += data[position + HEADER : position + HEADER + length]
        position += HEADER + length
        if kind in (1, 4):
            records.append(wandb_pb.Record.FromString(pending))
            pending = b""
    return records


def offline_runs(run_dir):
    """(run id, config, logged history rows) of each offline W&B run in a run directory."""
    runs = []
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        run_id, config, history = None, {}, []
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run_id = record.run.run_id
                config |= {i.key: json.loads(i.value_json) for i in record.run.config.update}
            elif kind == "history":
                history.append(
                    {
                        i.key or ".".join(i.nested_key): json.loads(i.value_json)
                        for i in record.history.item
                    }
                )
        runs.append((run_id, config, history))
    return runs


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    # No settings or credentials from the machine.
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def test_a_run_logs_its_metrics_to_an_offline_wandb_run_resumed_with_it(offline, tmp_path):
    out = tmp_path / "run"

    def stop_after_the_first_checkpoint(iteration, row):
        if iteration == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(
            "ppo",
            RunConfig(out=out, wandb_project="gprl-test", **RUN),
            PPO,
            on_iteration=stop_after_the_first_checkpoint,
        )
    train("ppo", RunConfig(resume=out, progress=False), PPO)

    runs = offline_runs(out)
    assert len(runs) == 2
    (first_id, config, first), (second_id, _, second) = runs
    assert first_id == second_id  # the resumed run logs to the same W&B run
    assert config["algo"] == "ppo" and config["run"]["total_steps"] == 512
    assert [row["env_steps"] for row in first] == [128, 256, 384]
    # Resumed from the checkpoint at 256 env steps: 384 is logged again, with the same values.
    assert [row["env_steps"] for row in second] == [384, 512]
    untimed = [
        {k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in (first[-1], second[0])
    ]
    assert untimed[0] == untimed[1]
    with open(out / "metrics.csv", newline="") as f:
        last_row = list(csv.DictReader(f))[-1]
    logged = second[-1]
    assert {"eval_return", "train_return", "policy_loss", "value_loss"} <= set(logged)
    for key in ("iteration", "env_steps", "eval_return", "policy_loss"):
        assert logged[key] == pytest.approx(float(last_row[key]), rel=1e-12), key


def test_wandb_is_never_required(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now fails
    argv = ["train", "ppo", "--env", RUN["env"], "--total-steps", "256", "--num-envs", "4"]
    argv += ["--ppo.rollout-steps", "32", "--ppo.num-minibatches", "4", "--no-progress"]
    cli.main([*argv, "--out", str(tmp_path / "plain")])
    assert (tmp_path / "plain" / "checkpoint").is_dir()

    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--out", str(tmp_path / "logged"), "--wandb-project", "gprl-test"])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr == "gprl: error: --wandb-project needs wandb: pip install 'gprl[wandb]'\n"
    assert not (tmp_path / "logged").exists()
