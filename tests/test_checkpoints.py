"""Checkpoint files: loading one cannot run code, changed bytes are reported as corruption (never loaded),
every entry and config field is checked by name, and files of the earlier format (no checksum) still load."""
import hashlib
import io
import logging
import os
import zipfile

import pytest
import torch

from ntm_fast.tools.runfolder import UsageError
from ntm_fast.tools.train import (CHECKPOINT_FORMAT, Trainer, TrainConfig, load_checkpoint, model_from_checkpoint,
                            write_checkpoint)

TINY = dict(controller_size=8, memory_slots=6, memory_width=4)


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    """The state of a tiny run after 2 steps (RMSprop, so the optimiser state is not empty)."""
    out = tmp_path_factory.mktemp("run")
    trainer = Trainer(TrainConfig(steps=2, batch_size=2, max_length=2, checkpoint_every=2, out_dir=str(out),
                                  backend="reference", final_eval=False, plots=False, progress=False, model=TINY))
    trainer.fit()
    return trainer.state_dict()


def same(a, b) -> bool:
    """Equal values, dtypes and shapes all the way down."""
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    return type(a) is type(b) and a == b


def test_round_trip_and_the_file_holds_only_tensors_and_plain_values(state, tmp_path):
    path = str(tmp_path / "c.pt")
    write_checkpoint(state, path)
    assert same(load_checkpoint(path), state)
    outer = torch.load(path, weights_only=True)  # loads without allowing any other type
    assert outer["format"] == CHECKPOINT_FORMAT and outer["payload"].dtype == torch.uint8
    assert outer["sha256"] == hashlib.sha256(outer["payload"].numpy().tobytes()).hexdigest()
    assert all(v.dtype == torch.uint8 for v in (state["data_rng"], state["torch_rng"]))


class RunsACommand:
    """Unpickles to os.system(command): what a hostile checkpoint would hold."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def hostile_files(state, folder, marker):
    """Three files whose loading would run `touch marker`: in the outer file, in a payload with a valid
    checksum (anyone can compute one), and in a file of the earlier format."""
    payload = RunsACommand(f"touch {marker}")
    paths = {name: str(folder / f"{name}.pt") for name in ("outer", "payload", "format-1")}
    torch.save({"format": CHECKPOINT_FORMAT, "version": 2, "sha256": "0" * 64, "payload": payload}, paths["outer"])
    buffer = io.BytesIO()
    torch.save({**state, "model": payload}, buffer)
    data = buffer.getvalue()
    torch.save({"format": CHECKPOINT_FORMAT, "version": 2, "sha256": hashlib.sha256(data).hexdigest(),
                "payload": torch.frombuffer(bytearray(data), dtype=torch.uint8)}, paths["payload"])
    torch.save({**state, "optimizer": payload}, paths["format-1"])
    return paths


def test_a_checkpoint_that_would_run_code_is_refused_and_nothing_runs(state, tmp_path):
    marker = tmp_path / "ran"
    for name, path in hostile_files(state, tmp_path, marker).items():
        with pytest.raises(UsageError, match=r"refused: .* holds objects other than tensors and plain values, and "
                                             r"loading it could run code \(.*GLOBAL posix.system"):
            load_checkpoint(path)
        assert not marker.exists(), name


def payload_records(path):
    """(name, offset, size) of each record of a torch zip file."""
    with zipfile.ZipFile(path) as archive:
        return [(i.filename, i.header_offset + 30 + len(i.filename.encode()) + len(i.extra), i.file_size)
                for i in archive.infolist()]


def flipped(raw: bytes, position: int) -> bytes:
    changed = bytearray(raw)
    changed[position] ^= 0x5A
    return bytes(changed)


def test_changed_bytes_are_reported_as_corruption_never_loaded(state, tmp_path):
    path = tmp_path / "c.pt"
    write_checkpoint(state, str(path))
    raw = path.read_bytes()
    records = payload_records(str(path))
    payload = max(records, key=lambda r: r[2])  # the serialised state
    bad = tmp_path / "bad.pt"
    # A byte in the middle of the state: the checksum no longer matches.
    bad.write_bytes(flipped(raw, payload[1] + payload[2] // 2))
    with pytest.raises(UsageError, match="is corrupt: its contents do not match the checksum"):
        load_checkpoint(str(bad))
    # Bytes all over the file (every record and header among them): refused, or (where the byte is one
    # nothing reads, such as zip padding) the very same state. Never other numbers.
    positions = set(range(0, len(raw), max(1, len(raw) // 300)))
    positions |= {offset + k for _, offset, size in records if size < 2048 for k in range(size)}  # small records
    for position in sorted(positions):
        bad.write_bytes(flipped(raw, position))
        try:
            loaded = load_checkpoint(str(bad))
        except UsageError:
            continue
        assert same(loaded, state), f"byte {position} changed the loaded state"


@pytest.mark.parametrize("content,message", [
    (lambda raw: raw[: len(raw) // 2], "is corrupt or not a checkpoint: the file cannot be read"),
    (lambda raw: b"", "is corrupt or not a checkpoint"),
    (lambda raw: b"model: 12\n", "is corrupt or not a checkpoint"),
])
def test_truncated_empty_and_foreign_files(state, tmp_path, content, message):
    path = tmp_path / "c.pt"
    write_checkpoint(state, str(path))
    path.write_bytes(content(path.read_bytes()))
    with pytest.raises(UsageError, match=message):
        load_checkpoint(str(path))


def test_missing_paths_and_folders(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_checkpoint(str(tmp_path / "none.pt"))
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(UsageError, match=r"is a folder, not a file; did you mean '.*checkpoint.pt'\?"):
        load_checkpoint(str(tmp_path))
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(UsageError, match="is not an ntm_fast checkpoint"):
        load_checkpoint(str(tmp_path / "other.pt"))


def edited(state, **entries):
    new = {**state, "train_config": dict(state["train_config"]), "model_config": dict(state["model_config"])}
    for name, value in entries.items():
        if value is DELETE:
            del new[name]
        else:
            new[name] = value(new) if callable(value) else value
    return new


DELETE = object()


@pytest.mark.parametrize("change,message", [
    (dict(model_config={}), "model_config lacks the field 'input_size'"),
    (dict(train_config=DELETE), "lacks the entry 'train_config'"),
    (dict(train_config=lambda s: {k: v for k, v in s["train_config"].items() if k != "optimizer"}),
     "train_config lacks the field 'optimizer'"),
    (dict(train_config=lambda s: {**s["train_config"], "colour": "red"}), "train_config has an unknown field 'colour'"),
    (dict(train_config=lambda s: {**s["train_config"], "steps": "many"}), "train_config: 'steps' must be an integer"),
    (dict(train_config=lambda s: {**s["train_config"], "task": "chess"}), "train_config: unknown task 'chess'"),
    (dict(model_config=lambda s: {**s["model_config"], "memory_slots": 0}), "'memory_slots' must be an integer >= 1"),
    (dict(model_config=lambda s: {**s["model_config"], "memory_slots": 7}),
     r"weight 'cell.memory0' has shape \(6, 4\), but its model_config gives \(7, 4\)"),
    (dict(model_config=lambda s: {**s["model_config"], "input_size": 5}),
     "model_config 'input_size' is 5, but task 'copy' has 9"),
    (dict(step=-1), "entry 'step' must be an integer >= 0, got int -1"),
    (dict(step=2.0), "entry 'step' must be an integer >= 0, got float 2.0"),
    (dict(data_rng=[1, 2]), "entry 'data_rng' must be a generator state"),
    (dict(torch_rng=torch.zeros(3)), "entry 'torch_rng' must be a generator state"),
    (dict(loss_avg=float("nan")), "entry 'loss_avg' must be None or a finite number"),
    (dict(optimizer={"state": {}}), "entry 'optimizer' must be an optimiser state dict"),
    (dict(model=DELETE), "lacks the entry 'model'"),
    (dict(best={"step": 3}), "entry 'best' must be None or {'step', 'score', 'errors', 'solved'}"),
])
def test_each_bad_or_missing_entry_is_named(state, tmp_path, change, message):
    path = str(tmp_path / "c.pt")
    write_checkpoint(edited(state, **change), path)  # a valid checksum: what is checked is the content
    with pytest.raises(UsageError, match=message):
        load_checkpoint(path)


def test_a_checkpoint_from_before_the_best_model_loads_with_its_defaults(state, tmp_path):
    # Written by the current format before runs kept a best model: no 'best' entry, no selection settings.
    later = ("keep_best", "select_sequences", "stop_when_solved")
    old = {k: v for k, v in state.items() if k != "best"}
    old["train_config"] = {k: v for k, v in state["train_config"].items() if k not in later}
    path = str(tmp_path / "c.pt")
    write_checkpoint(old, path)
    loaded = load_checkpoint(path)
    assert loaded["best"] is None
    defaults = TrainConfig()
    assert {k: loaded["train_config"][k] for k in later} == {k: getattr(defaults, k) for k in later}


def test_a_newer_format_version_is_refused(state, tmp_path):
    path = tmp_path / "c.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "version": 3, "sha256": "", "payload": torch.zeros(1, dtype=torch.uint8)},
               path)
    with pytest.raises(UsageError, match="has format version 3; this ntm_fast reads version 2"):
        load_checkpoint(str(path))


def test_a_checkpoint_of_the_earlier_format_loads_checked_against_its_zip_crcs(state, tmp_path, caplog):
    old = {k: v for k, v in state.items() if k != "curriculum_level"}  # written before the curriculum, too
    old["train_config"] = {k: v for k, v in state["train_config"].items() if not k.startswith("curriculum")}
    path = tmp_path / "old.pt"
    torch.save(old, path)  # how checkpoints were written: the state dict itself
    with caplog.at_level(logging.WARNING, logger="ntm_fast.tools.train"):
        loaded = load_checkpoint(str(path))
    assert "written by an earlier ntm_fast (no checksum): checked against its zip CRCs" in caplog.text
    assert same(loaded["model"], state["model"]) and same(loaded["optimizer"], state["optimizer"])
    assert loaded["curriculum_level"] is None and loaded["train_config"]["curriculum"] is False
    model = model_from_checkpoint(loaded, backend="reference")
    assert same(model.state_dict(), state["model"])
    # A changed byte in a tensor record fails its CRC.
    name, offset, size = max((r for r in payload_records(str(path)) if "/data/" in r[0]), key=lambda r: r[2])
    path.write_bytes(flipped(path.read_bytes(), offset + size // 2))
    with pytest.raises(UsageError, match=f"is corrupt: record '{name}' fails its CRC check"):
        load_checkpoint(str(path))
