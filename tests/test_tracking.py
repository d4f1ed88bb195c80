"""[tracking]: a finished run sent to MLflow, W&B and TensorBoard, read back through each
library's own reader (MLflow's client, W&B's record protobufs, TensorBoard's
EventAccumulator) and compared with run.json; a tracker that fails is a warning, and a run
that names no tracker imports neither library."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from harness.cli import app

from .conftest import ASSETS, REPO, cli_run, tiny_suite_text

runner = CliRunner()
ARMS = ["baseline", "r4", "r8"]  # the zero-shot arm and a sweep of two ranks
COMPARED = ("abs_diff", "ci_low", "ci_high", "p_value", "p_value_holm")


def _suite(folder: Path, model: Path, tracking: str) -> Path:
    """The tiny suite at 6 steps, swept over r = 4, 8, with ``tracking`` appended."""
    shutil.copy(ASSETS / "instruct.jsonl", folder / "instruct.jsonl")
    text = (tiny_suite_text(model).replace("max_steps = 24", "max_steps = 6")
            .replace("eval_steps = 12", "eval_steps = 3")
            .replace("logging_steps = 4", "logging_steps = 2"))
    text += '\n[sweep]\ngrid = { "train.r" = [4, 8] }\n\n' + tracking
    (folder / "tiny.toml").write_text(text, encoding="utf-8")
    return folder / "tiny.toml"


@dataclass
class Tracked:
    folder: Path  # the suite's folder: relative store paths resolve here
    run: Path
    record: dict[str, Any]


def _tracked_run(folder: Path, model: Path, cache: Path, tracking: str, *sets: str,
                 **env: str) -> Tracked:
    suite = _suite(folder, model, tracking)
    elsewhere = folder / "cwd"  # the process runs elsewhere: stores still land beside the suite
    elsewhere.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(elsewhere)
        for k, v in {"HARNESS_CACHE": str(cache), "WANDB_MODE": "offline", "WANDB_SILENT": "true",
                     "WANDB_DATA_DIR": str(folder / "wandb-data"),
                     "WANDB_CACHE_DIR": str(folder / "wandb-cache"),
                     "WANDB_CONFIG_DIR": str(folder / "wandb-config"), **env}.items():
            mp.setenv(k, v)
        hooks = sys.exit, sys.excepthook
        run = cli_run(suite, folder / "out", *sets)
        assert (sys.exit, sys.excepthook) == hooks  # W&B's own are taken back off
    return Tracked(folder, run, json.loads((run / "run.json").read_text("utf-8")))


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tracking-cache")


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, tiny_model_dir, cache) -> Tracked:
    """One run to all three: MLflow in a SQLite store, W&B offline, TensorBoard."""
    return _tracked_run(tmp_path_factory.mktemp("tracked"), tiny_model_dir, cache, '''
[tracking]
mlflow = { tracking_uri = "sqlite:///mlruns.db", experiment = "harness" }
wandb = { project = "harness", mode = "offline", dir = "wb" }
tensorboard = true
''')


@pytest.fixture(scope="module")
def file_store(tmp_path_factory, tiny_model_dir, cache, tracked) -> Tracked:
    """MLflow in a local file store (MLflow 3 asks for MLFLOW_ALLOW_FILE_STORE), named by
    ``--set`` (so relative to the current folder, as the shell means it), and W&B given a
    folder under a file, which it cannot create. After ``tracked``: same cache."""
    folder = tmp_path_factory.mktemp("file-store")
    (folder / "a-file").write_text("not a folder", encoding="utf-8")
    return _tracked_run(folder, tiny_model_dir, cache, '''
[tracking]
mlflow = { tracking_uri = "sqlite:///not-this.db", experiment = "files" }
wandb = { project = "harness", mode = "offline", dir = "a-file/wb" }
''', "tracking.mlflow.tracking_uri=file:mlruns", MLFLOW_ALLOW_FILE_STORE="true")


# ---------------------------------------------------------------- MLflow


def _mlflow_runs(uri: str, experiment: str, record: dict[str, Any]):
    """(client, parent run, {arm: child run}) as MLflow's own client reads them."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    (parent,) = client.search_runs([exp.experiment_id],
                                   f"attributes.run_name = '{record['run_id']}'")
    children = client.search_runs([exp.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return client, parent, {c.info.run_name: c for c in children}


def _check_arm_metrics(child: Any, record: dict[str, Any], arm: str) -> None:
    got = child.data.metrics
    for metric, value in record["arms"][arm]["metrics"].items():
        assert got[f"eval/{metric}"] == pytest.approx(value, abs=1e-9), (arm, metric)
    rows = [r for r in record["comparisons"] if r["candidate"] == arm]
    assert bool(rows) == (arm != "baseline")
    for row in rows:
        at = f"compare/{row['baseline']}/{row['metric']}"
        for field in COMPARED:
            if row[field] is not None:
                assert got[f"{at}/{field}"] == pytest.approx(row[field], abs=1e-9), (at, field)
        assert got[f"{at}/significant"] == float(row["significant"])


def test_mlflow_sqlite_store_holds_a_parent_run_and_a_child_per_arm(tracked, tmp_path):
    rec = tracked.record
    db = tracked.folder / "mlruns.db"
    assert db.is_file() and not (tracked.folder / "cwd" / "mlruns.db").exists()
    client, parent, children = _mlflow_runs(f"sqlite:///{db}", "harness", rec)
    assert parent.info.status == "FINISHED"
    assert {k: parent.data.params[k] for k in ("run_id", "suite", "status")} == {
        "run_id": rec["run_id"], "suite": "tiny", "status": "success"}
    assert parent.data.metrics["wall_time_s"] == pytest.approx(rec["wall_time_s"], abs=1e-9)
    assert sorted(children) == ARMS == sorted(rec["arms"])
    for arm, child in children.items():
        _check_arm_metrics(child, rec, arm)
    for arm in ("r4", "r8"):
        params = children[arm].data.params
        assert params["method"] == params["train.method"] == "lora"
        assert params["train.r"] == str(rec["training"][arm]["config"]["r"]) == arm[1:]
        log = [json.loads(line) for line in (tracked.run / "train_log.jsonl").open()]
        want = [(r["step"], r["loss"]) for r in log if r["arm"] == arm and "loss" in r]
        history = client.get_metric_history(children[arm].info.run_id, "train/loss")
        assert sorted((m.step, m.value) for m in history) == want and len(want) >= 3
    names = sorted(a.path for a in client.list_artifacts(parent.info.run_id))
    assert names == ["report.html", "report.md"]
    got = Path(client.download_artifacts(parent.info.run_id, "report.md", str(tmp_path)))
    assert got.read_bytes() == (tracked.run / "report.md").read_bytes()
    assert (tracked.folder / "mlartifacts").is_dir()  # beside the database, not in the cwd


def test_mlflow_file_store_reads_back_equal_to_run_json(file_store):
    rec = file_store.record
    store = file_store.folder / "cwd" / "mlruns"  # --set: from the current folder
    assert store.is_dir() and not (file_store.folder / "not-this.db").exists()
    _, parent, children = _mlflow_runs(store.as_uri(), "files", rec)
    assert sorted(children) == ARMS
    for arm, child in children.items():
        _check_arm_metrics(child, rec, arm)
        assert child.data.params["status"] == "success"


# ---------------------------------------------------------------- W&B


def _wandb_records(path: Path) -> Iterator[Any]:
    """The protobuf records of a .wandb file (W&B's LevelDB-style log: a 7-byte file header,
    32 KiB blocks, each chunk with a 7-byte header: CRC, length, kind 1 full / 2 first /
    3 middle / 4 last), decoded with W&B's own Record message."""
    from wandb.proto import wandb_internal_pb2

    data, pos, block, part = path.read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        _, size, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if left < 7 or (size == 0 and kind == 0):  # the block's padding
            pos += left
            continue
        part += data[pos + 7:pos + 7 + size]
        pos += 7 + size
        if kind in (1, 4):
            r = wandb_internal_pb2.Record()
            r.ParseFromString(part)
            part = b""
            yield r


@dataclass
class WandbRun:
    name: str
    group: str
    config: dict[str, Any]
    summary: dict[str, Any]
    history: list[dict[str, Any]]
    artifacts: list[Any]


def _wandb_run(path: Path) -> WandbRun:
    run, summary, history, artifacts = None, {}, [], []
    for r in _wandb_records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run = r.run
        elif kind == "summary":
            summary |= {(u.key or "/".join(u.nested_key)): json.loads(u.value_json)
                        for u in r.summary.update}
        elif kind == "history":
            history.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                            for i in r.history.item})
        elif kind == "artifact":
            artifacts.append(r.artifact)
    assert run is not None
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    return WandbRun(run.display_name, run.run_group, config, summary, history, artifacts)


def test_wandb_offline_runs_one_per_arm_in_the_run_s_group(tracked):
    rec = tracked.record
    files = sorted((tracked.folder / "wb" / "wandb").glob("offline-run-*/run-*.wandb"))
    runs = {r.name: r for r in map(_wandb_run, files)}
    assert sorted(runs) == ARMS
    report_md = base64.b64encode(hashlib.md5((tracked.run / "report.md").read_bytes())
                                 .digest()).decode()
    for arm, run in runs.items():
        assert run.group == rec["run_id"] and run.config["suite"] == "tiny"
        for metric, value in rec["arms"][arm]["metrics"].items():
            assert run.summary[f"eval/{metric}"] == pytest.approx(value, abs=1e-9)
        for row in (r for r in rec["comparisons"] if r["candidate"] == arm):
            at = f"compare/{row['baseline']}/{row['metric']}"
            for field in (f for f in COMPARED if row[f] is not None):
                assert run.summary[f"{at}/{field}"] == pytest.approx(row[field], abs=1e-9)
            assert f"{at}/p_value" in run.summary or row["p_value"] is None
        (artifact,) = run.artifacts
        contents = {c.path: c.digest for c in artifact.manifest.contents}
        assert contents["report.md"] == report_md and "report.html" in contents
    assert runs["r8"].config["train.r"] == 8 and runs["r8"].config["method"] == "lora"
    log = [json.loads(line) for line in (tracked.run / "train_log.jsonl").open()]
    want = [(r["step"], r["loss"]) for r in log if r["arm"] == "r4" and "loss" in r]
    got = [(h["_step"], h["train/loss"]) for h in runs["r4"].history if "train/loss" in h]
    assert got == want and len(want) >= 3


# ---------------------------------------------------------------- TensorBoard


def test_tensorboard_events_hold_each_arm_s_metrics_and_comparisons(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rec = tracked.record
    folder = tracked.run / "tracking" / "tensorboard"
    assert sorted(p.name for p in folder.iterdir()) == ARMS
    for arm in ARMS:
        events = EventAccumulator(str(folder / arm))
        events.Reload()
        for metric, value in rec["arms"][arm]["metrics"].items():
            (scalar,) = events.Scalars(f"eval/{metric}")
            # TensorBoard's scalars are 32-bit floats: 2**-24 relative
            assert scalar.value == pytest.approx(value, rel=2**-23)
        for row in (r for r in rec["comparisons"] if r["candidate"] == arm):
            (d,) = events.Scalars(f"compare/{row['baseline']}/{row['metric']}/abs_diff")
            assert d.value == pytest.approx(row["abs_diff"], rel=2**-23)


# ---------------------------------------------------------------- failures and absence


def test_a_failing_tracker_is_a_warning_and_the_run_succeeds(tracked, file_store):
    rec = file_store.record
    assert rec["status"] == "success" and rec["error"] is None
    said = [w for w in rec["warnings"] if w.startswith("tracking.wandb: not logged")]
    assert len(said) == 1, rec["warnings"]
    assert said[0] in (file_store.run / "report.md").read_text("utf-8")
    # [tracking] is in no cache key and changes no number: the zero-shot arm was reused
    assert rec["arms"]["baseline"]["cached"] is True
    assert rec["arms"]["baseline"]["metrics"] == tracked.record["arms"]["baseline"]["metrics"]


def test_a_run_without_tracking_imports_no_tracker(suite_dir, tmp_path):
    code = f"""
import sys
from typer.testing import CliRunner
from harness.cli import app
res = CliRunner().invoke(app, ["run", {str(suite_dir / 'tiny.toml')!r}, "--out",
                               {str(tmp_path / 'out')!r}, "--set", "train.max_steps=2"])
assert res.exit_code == 0, res.output
print(sorted(m for m in ("mlflow", "wandb") if m in sys.modules))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd=REPO, env={**_env(), "HARNESS_CACHE": str(tmp_path)})
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == "[]"


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MLFLOW_"))}


def _validate(suite_dir: Path, extra: str):
    path = suite_dir / "tiny.toml"
    path.write_text(path.read_text("utf-8") + extra, encoding="utf-8")
    return runner.invoke(app, ["validate", str(path)])


def _one_line_exit_2(res: Any, *needles: str) -> None:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert any(all(n in ln for n in needles) for ln in res.output.splitlines()), res.output


@pytest.mark.parametrize("table, key", [
    ('[tracking]\ntensorbord = true\n', "tensorbord"),
    ('[tracking]\nmlflow = { tracking_uri = "sqlite:///m.db", experimnt = "h" }\n', "experimnt"),
    ('[tracking]\nwandb = { project = "p", mode = "offline", team = "x" }\n', "team"),
])
def test_validate_refuses_an_unknown_tracking_key(suite_dir, table, key):
    _one_line_exit_2(_validate(suite_dir, table), key)


@pytest.mark.parametrize("blocked, table, needles", [
    ("wandb", 'wandb = { project = "p", mode = "offline" }', ("tracking.wandb", "[wandb]")),
    ("sqlalchemy", 'mlflow = { tracking_uri = "sqlite:///m.db" }',
     ("tracking.mlflow", "sqlalchemy", "[mlflow]")),
    ("tensorboard", "tensorboard = true", ("tracking.tensorboard", "[tensorboard]")),
])
def test_a_tracker_that_is_not_installed_is_refused_with_its_install_line(
        suite_dir, monkeypatch, blocked, table, needles):
    monkeypatch.setitem(sys.modules, blocked, None)  # import <blocked> -> ImportError
    res = _validate(suite_dir, f"[tracking]\n{table}\n")
    _one_line_exit_2(res, "pip install 'harness", *needles)


def test_a_sweep_cell_cannot_override_tracking(suite_dir):
    res = _validate(suite_dir, '[sweep]\ncells = [{ name = "a", set = { '
                               '"tracking.tensorboard" = true } }]\n')
    _one_line_exit_2(res, "tracking.tensorboard", "cannot override")
