from __future__ import annotations

import copy
import json
import math
import os
import random
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from schemas.checkpoint import (
    COMPLETE_MARKER,
    CONFIG,
    OPTIMIZER_META,
    OPTIMIZER_TENSORS,
    SCHEDULER,
    STATE,
    TEXT_TOKENIZER_DIR,
    TRAINABLE,
    step_dir_name,
)
from vtok.storage import get_fs
from vtok.training import checkpoint as ckpt
from vtok.training.checkpoint import (
    CheckpointError,
    latest_complete,
    list_checkpoints,
    load_checkpoint,
    retain,
    save_checkpoint,
)
from vtok.training.checkpoint_io import Publisher
from vtok.training.train_state import (
    decode_state,
    encode_state,
    load_optimizer_state,
    load_scheduler_state,
    optimizer_state_to_tensors,
    rng_state,
    scheduler_state_to_json,
    set_rng_state,
)


def _tensors() -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(4, 3, generator=g)
    return {
        TRAINABLE: {
            "proj.weight": weight,
            "proj.tied": weight,  # tied weights share storage; safetensors alone refuses them
            "proj.bias": torch.randn(3, generator=g).to(torch.bfloat16),
            "row": weight[1],  # a view into a larger storage
            "count": torch.tensor(7, dtype=torch.int64),
            "empty": torch.empty(0, 5),
        },
        "feature_stats.safetensors": {"mean": torch.arange(6, dtype=torch.float64)},
    }


def _json() -> dict[str, object]:
    return {STATE: {"step": 100, "epoch": 1, "batches_seen": 400, "lr": 1e-4}, CONFIG: {"model": {"d": 8}}}


def _tokenizer_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "tok"
    (folder / "sub").mkdir(parents=True)
    (folder / "tokenizer.json").write_text('{"vocab": {"a": 0}}')
    (folder / "sub" / "merges.txt").write_bytes(b"a b\n" * 10)
    return folder


def _assert_same_tensors(got: dict[str, dict[str, torch.Tensor]], want: dict[str, dict[str, torch.Tensor]]) -> None:
    assert set(got) == set(want)
    for name, group in want.items():
        assert set(got[name]) == set(group)
        for key, value in group.items():
            assert got[name][key].dtype == value.dtype and torch.equal(got[name][key], value), (name, key)


def _round_trip(run: str, tmp_path: Path) -> None:
    tok = _tokenizer_dir(tmp_path)
    uri = save_checkpoint(run, 100, tensors=_tensors(), json_files=_json(), dirs={TEXT_TOKENIZER_DIR: tok})
    assert uri == f"{run}/checkpoints/step_00000100"
    assert latest_complete(run) == ckpt.CheckpointInfo(100, uri, True)
    loaded = load_checkpoint(uri)
    assert loaded.step == 100 and loaded.uri == uri
    _assert_same_tensors(loaded.tensors, _tensors())
    assert loaded.json_files == _json()
    local = loaded.dirs[TEXT_TOKENIZER_DIR]
    assert (local / "tokenizer.json").read_text() == '{"vocab": {"a": 0}}'
    assert (local / "sub" / "merges.txt").read_bytes() == b"a b\n" * 10
    listed = {f["path"] for f in loaded.marker["files"]}
    assert listed == {TRAINABLE, "feature_stats.safetensors", STATE, CONFIG,
                      "text_tokenizer/tokenizer.json", "text_tokenizer/sub/merges.txt"}


def test_save_load_round_trip_local(tmp_path: Path) -> None:
    _round_trip(str(tmp_path / "run"), tmp_path)


def test_save_load_round_trip_s3(s3_bucket: str, tmp_path: Path) -> None:
    run = f"s3://{s3_bucket}/run"
    _round_trip(run, tmp_path)
    # A second load reuses the downloaded folder instead of fetching it again.
    first = load_checkpoint(f"{run}/checkpoints/step_00000100").dirs[TEXT_TOKENIZER_DIR]
    assert load_checkpoint(f"{run}/checkpoints/step_00000100").dirs[TEXT_TOKENIZER_DIR] == first


def test_marker_is_written_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[str] = []
    publish, publish_copy = Publisher.publish, Publisher.publish_copy
    monkeypatch.setattr(Publisher, "publish", lambda self, tmp, rel: (order.append(rel), publish(self, tmp, rel)))
    monkeypatch.setattr(Publisher, "publish_copy",
                        lambda self, src, rel: (order.append(rel), publish_copy(self, src, rel)))
    save_checkpoint(str(tmp_path / "run"), 1, tensors=_tensors(), json_files=_json(),
                    dirs={TEXT_TOKENIZER_DIR: _tokenizer_dir(tmp_path)})
    assert order[-1] == COMPLETE_MARKER and order.count(COMPLETE_MARKER) == 1


def _half_written(run: Path, step: int) -> Path:
    folder = run / "checkpoints" / step_dir_name(step)
    folder.mkdir(parents=True)
    (folder / TRAINABLE).write_bytes(b"partial")
    (folder / ".tmp-abc").write_bytes(b"x")
    return folder


def test_folder_without_marker_is_ignored_and_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    save_checkpoint(str(run), 100, json_files=_json())
    folder = _half_written(run, 200)
    infos = list_checkpoints(str(run))
    assert [(i.step, i.complete) for i in infos] == [(100, True), (200, False)]
    assert "no 'complete' marker" in infos[1].problems[0]
    assert latest_complete(str(run)).step == 100
    with pytest.raises(ValueError, match=rf"^{folder}: refusing this checkpoint: there is no 'complete' marker"):
        load_checkpoint(str(folder))
    with pytest.raises(ValueError, match="refusing"):
        load_checkpoint(str(tmp_path / "nothing"))


def test_folder_without_marker_is_ignored_on_s3(s3_bucket: str) -> None:
    run = f"s3://{s3_bucket}/run"
    save_checkpoint(run, 100, json_files=_json())
    fs, _ = get_fs(run)
    fs.pipe_file(f"{s3_bucket}/run/checkpoints/step_00000200/{TRAINABLE}", b"partial")
    assert [(i.step, i.complete) for i in list_checkpoints(run)] == [(100, True), (200, False)]
    assert latest_complete(run).step == 100
    with pytest.raises(ValueError, match=rf"^{run}/checkpoints/step_00000200: refusing"):
        load_checkpoint(f"{run}/checkpoints/step_00000200")


def test_truncated_or_changed_file_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    save_checkpoint(str(run), 100, tensors=_tensors(), json_files=_json())
    uri = save_checkpoint(str(run), 200, tensors=_tensors(), json_files=_json())
    weights = Path(uri) / TRAINABLE
    data = weights.read_bytes()
    weights.write_bytes(data[:-4])
    with pytest.raises(ValueError, match=rf"^{uri}: refusing .*'{TRAINABLE}' has {len(data) - 4} bytes, the marker says {len(data)}"):
        load_checkpoint(uri)
    # A truncated checkpoint is not complete: a rerun resumes from the one before.
    assert latest_complete(str(run)).step == 100
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, other content
    with pytest.raises(ValueError, match="does not match the sha256"):
        load_checkpoint(uri)
    assert load_checkpoint(uri, verify=False).step == 200


def test_saving_a_step_again_replaces_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    folder = _half_written(run, 100)
    (folder / "stale.json").write_text("{}")
    save_checkpoint(str(run), 100, json_files=_json())
    assert sorted(p.name for p in folder.iterdir()) == sorted([COMPLETE_MARKER, CONFIG, STATE])
    assert load_checkpoint(str(folder)).json_files == _json()
    # Again over a complete one, copying the tokenizer folder that checkpoint itself holds.
    save_checkpoint(str(run), 100, json_files=_json(), dirs={TEXT_TOKENIZER_DIR: _tokenizer_dir(tmp_path)})
    loaded = load_checkpoint(str(folder))
    save_checkpoint(str(run), 100, tensors=_tensors(), dirs={TEXT_TOKENIZER_DIR: loaded.dirs[TEXT_TOKENIZER_DIR]})
    again = load_checkpoint(str(folder))
    assert again.json_files == {} and (again.dirs[TEXT_TOKENIZER_DIR] / "sub" / "merges.txt").exists()
    _assert_same_tensors(again.tensors, _tensors())
    assert [p.name for p in (run / "checkpoints").iterdir()] == [folder.name]


def test_bad_save_requests_fail_before_touching_storage(tmp_path: Path) -> None:
    run = tmp_path / "run"
    uri = save_checkpoint(str(run), 100, json_files=_json())
    for kwargs, needle in [
        ({"tensors": {"weights.bin": {}}}, "must end with .safetensors"),
        ({"json_files": {"state.txt": {}}}, "must end with .json"),
        ({"json_files": {COMPLETE_MARKER: {}}}, "reserved"),
        ({"json_files": {"a/b.json": {}}}, "plain file"),
        ({"json_files": {STATE: {"loss": math.nan}}}, "state.json: cannot be written as JSON"),
        ({"dirs": {"llm": tmp_path / "missing"}}, "not a local directory"),
        ({"json_files": {"x.json": {}}, "dirs": {"x.json": tmp_path}}, "twice"),
    ]:
        with pytest.raises(CheckpointError, match=needle):
            save_checkpoint(str(run), 100, **kwargs)
    assert load_checkpoint(uri).json_files == _json()


def test_retain(tmp_path: Path) -> None:
    run = tmp_path / "run"
    for step in (100, 300, 400):
        save_checkpoint(str(run), step, json_files=_json())
    _half_written(run, 200)  # a crash's leftover, older than the newest complete
    _half_written(run, 500)  # being written (or crashed) after the newest complete: kept
    with pytest.raises(ValueError, match="checkpoint.keep_last must be an int >= 1, got 0"):
        retain(str(run), 0)
    assert retain(str(run), 1, protect={100}) == [200, 300]
    assert [(i.step, i.complete) for i in list_checkpoints(str(run))] == [(100, True), (400, True), (500, False)]
    assert retain(str(run), 1) == [100]
    assert retain(str(run), 1) == []
    assert [i.step for i in list_checkpoints(str(run))] == [400, 500]


def test_retain_never_deletes_the_newest_complete(tmp_path: Path) -> None:
    run = tmp_path / "run"
    save_checkpoint(str(run), 100, json_files=_json())
    uri = save_checkpoint(str(run), 200, json_files=_json())
    (Path(uri) / STATE).write_text("{}")  # the newest is damaged: it no longer counts as complete
    assert retain(str(run), 1) == []
    assert [i.step for i in list_checkpoints(str(run))] == [100, 200]
    assert retain(str(tmp_path / "empty"), 3) == []


def test_retain_on_s3(s3_bucket: str) -> None:
    run = f"s3://{s3_bucket}/run"
    for step in (1, 2, 3):
        save_checkpoint(run, step, tensors=_tensors(), json_files=_json())
    assert retain(run, 2) == [1]
    assert [i.step for i in list_checkpoints(run)] == [2, 3]


def test_deleting_removes_the_marker_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    for step in (1, 2):
        save_checkpoint(str(run), step, json_files=_json())

    def crash(path: object, *args: object, **kwargs: object) -> None:
        raise OSError("killed mid-delete")

    monkeypatch.setattr(shutil, "rmtree", crash)
    with pytest.raises(OSError, match="killed"):
        retain(str(run), 1)
    first = list_checkpoints(str(run))[0]
    assert (first.step, first.complete) == (1, False)
    assert (Path(first.uri) / STATE).exists()


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.parametrize(("mask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_modes_follow_the_umask(tmp_path: Path, umask: None, mask: int, file_mode: int, dir_mode: int) -> None:
    os.umask(mask)
    uri = save_checkpoint(str(tmp_path / "run"), 5, tensors=_tensors(), json_files=_json(),
                          dirs={TEXT_TOKENIZER_DIR: _tokenizer_dir(tmp_path)})
    for path in [Path(uri), *Path(uri).rglob("*")]:
        want = dir_mode if path.is_dir() else file_mode
        assert stat.S_IMODE(path.stat().st_mode) == want, path


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def _optimizer(model: torch.nn.Module, lr: float = 1e-2) -> torch.optim.AdamW:
    params = list(model.parameters())
    return torch.optim.AdamW([{"params": params[:2], "lr": lr}, {"params": params[2:], "lr": lr / 2, "amsgrad": True}],
                             weight_decay=0.1)


def _train(model: torch.nn.Module, opt: torch.optim.Optimizer, sched: object, steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 4, generator=g)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def test_optimizer_and_scheduler_round_trip_exactly(tmp_path: Path) -> None:
    model = _model()
    opt = _optimizer(model)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    _train(model, opt, sched, 3, seed=1)

    tensors, meta = optimizer_state_to_tensors(opt)
    assert {"state.0.exp_avg", "state.0.exp_avg_sq", "state.0.step", "state.3.max_exp_avg_sq"} <= set(tensors)
    uri = save_checkpoint(
        str(tmp_path / "run"), 3,
        tensors={TRAINABLE: model.state_dict(), OPTIMIZER_TENSORS: tensors},
        json_files={OPTIMIZER_META: meta, SCHEDULER: scheduler_state_to_json(sched)},
    )
    loaded = load_checkpoint(uri)

    fresh = _model()
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)  # not the saved weights until loaded
    fresh.load_state_dict(loaded.tensors[TRAINABLE])
    fresh_opt = _optimizer(fresh, lr=0.5)
    fresh_sched = torch.optim.lr_scheduler.CosineAnnealingLR(fresh_opt, T_max=10)
    load_optimizer_state(fresh_opt, loaded.tensors[OPTIMIZER_TENSORS], loaded.json_files[OPTIMIZER_META])
    load_scheduler_state(fresh_sched, loaded.json_files[SCHEDULER])
    assert fresh_opt.param_groups[0]["betas"] == (0.9, 0.999)
    assert fresh_sched.get_last_lr() == sched.get_last_lr()

    _train(model, opt, sched, 2, seed=2)
    _train(fresh, fresh_opt, fresh_sched, 2, seed=2)
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)
    assert fresh_sched.get_last_lr() == sched.get_last_lr()


def test_optimizer_state_refuses_another_optimizer() -> None:
    model = _model()
    _, meta = optimizer_state_to_tensors(_optimizer(model))
    with pytest.raises(CheckpointError, match="saved from AdamW, cannot load it into SGD"):
        load_optimizer_state(torch.optim.SGD(model.parameters(), lr=0.1), {}, meta)


def test_plateau_scheduler_state_with_infinities_is_strict_json() -> None:
    opt = torch.optim.SGD(_model().parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0)
    sched.step(1.0)
    sched.step(2.0)
    data = json.loads(json.dumps(scheduler_state_to_json(sched), allow_nan=False))
    fresh = torch.optim.lr_scheduler.ReduceLROnPlateau(torch.optim.SGD(_model().parameters(), lr=0.1))
    load_scheduler_state(fresh, data)
    assert fresh.state_dict() == sched.state_dict()


def test_encode_state_round_trip() -> None:
    value = {
        "betas": (0.9, 0.999),
        "inf": [math.inf, -math.inf],
        1: {"int keys": True},
        "__tuple__": "a key that looks like a tag",
        "t": torch.tensor([[1.5, -2.25]], dtype=torch.bfloat16),
        "np": np.float32(0.1),
        "none": None,
    }
    back = decode_state(json.loads(json.dumps(encode_state(value), allow_nan=False)))
    t = back.pop("t")
    assert t.dtype == torch.bfloat16 and torch.equal(t, value.pop("t"))
    assert back == {**value, "np": float(np.float32(0.1))}
    with pytest.raises(TypeError, match="state.f: a function"):
        encode_state({"f": lambda: 0})


def _draw() -> list[float]:
    return [*torch.rand(3).tolist(), *np.random.rand(2).tolist(), np.random.randn(), random.random(), random.gauss(0, 1)]


def test_rng_state_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    np.random.randn(), random.gauss(0, 1)  # leave a cached Gaussian in both
    _draw()
    uri = save_checkpoint(str(tmp_path / "run"), 1, json_files={STATE: {"rng": rng_state()}})
    first = _draw()
    _draw()
    set_rng_state(load_checkpoint(uri).json_files[STATE]["rng"])
    assert _draw() == first


def test_rng_state_is_plain_json() -> None:
    state = rng_state()
    assert json.loads(json.dumps(state, allow_nan=False)) == state
    assert isinstance(state["torch"], list) and all(0 <= b < 256 for b in state["torch"])
    set_rng_state(copy.deepcopy(state))
