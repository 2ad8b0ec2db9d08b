"""crate_core.hub: safetensors + config.json export and import (round trip, overwrite, clear errors
for missing, corrupt or mismatched files), and on huggingface_hub: Hub repo ids read from the local
Hugging Face cache (offline by default, HF_HUB_OFFLINE respected), revisions, push_to_hub, the
generated model card, protected destinations."""

import json
import os
import shutil
import stat

import crate_core
import pytest
import torch
from crate_core import hub
from tiny_model import OtherModel, TinyModel, make_model
from torch import nn

COMMIT_A, COMMIT_B = "a" * 40, "b" * 40


def fake_cache(tmp_path, monkeypatch, exports: dict[str, str]):
    """A Hugging Face cache laid out as huggingface_hub writes it: models--org--name/{refs,snapshots/COMMIT}."""
    cache = tmp_path / "hf-cache"
    repo = cache / "models--org--crate-tiny"
    for commit, src in exports.items():
        shutil.copytree(src, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(list(exports)[-1])
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def test_repo_id_from_the_local_cache_and_revisions(tmp_path, monkeypatch):
    old = hub.save_pretrained(make_model(depth=1), tmp_path / "v1")
    new = hub.save_pretrained(make_model(depth=3), tmp_path / "v2")
    cache = fake_cache(tmp_path, monkeypatch, {COMMIT_A: old, COMMIT_B: new})
    assert len(crate_core.from_pretrained("org/crate-tiny", cache_dir=cache).trunk.layers) == 3  # refs/main
    assert len(crate_core.from_pretrained("org/crate-tiny", revision=COMMIT_A, cache_dir=cache).trunk.layers) == 1
    with pytest.raises(FileNotFoundError, match="org/other is neither a local folder nor in the local Hugging Face cache"):
        crate_core.from_pretrained("org/other", cache_dir=cache)
    with pytest.raises(FileNotFoundError, match="at revision 'v9'"):
        crate_core.from_pretrained("org/crate-tiny", revision="v9", cache_dir=cache)
    with pytest.raises(ValueError, match="revision='main' applies to Hub repos"):
        crate_core.from_pretrained(old, revision="main")


def test_offline_by_default_and_hf_hub_offline_wins(tmp_path, monkeypatch):
    calls = []
    import huggingface_hub

    real = huggingface_hub.snapshot_download

    def spy(*args, **kwargs):
        calls.append(kwargs["local_files_only"])
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", spy)
    cache = fake_cache(tmp_path, monkeypatch, {COMMIT_A: hub.save_pretrained(make_model(), tmp_path / "e")})
    crate_core.from_pretrained("org/crate-tiny", cache_dir=cache)
    assert calls == [True]  # no network unless asked
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="org/missing .*, and HF_HUB_OFFLINE is set; unset it") as e:
        crate_core.from_pretrained("org/missing", local_files_only=False, cache_dir=cache)  # asked for, refused offline
    assert "local_files_only" not in str(e.value)
    assert calls[-1] is False


def hub_connection_error() -> Exception:
    """What huggingface_hub's HTTP client raises when the network is unreachable (httpx2 / httpx / requests by release)."""
    from huggingface_hub import _snapshot_download

    for client in ("httpx2", "httpx"):
        if hasattr(_snapshot_download, client):
            return getattr(_snapshot_download, client).ConnectError("[Errno 101] Network is unreachable")
    import requests

    return requests.exceptions.ConnectionError("[Errno 101] Network is unreachable")


def test_no_network_is_one_line_naming_the_repo(tmp_path, monkeypatch):
    """local_files_only=False with the network down: one line naming the repo, the cache and the network, and no
    advice to pass local_files_only=False again; no traceback chain from huggingface_hub's client."""
    import huggingface_hub

    def unreachable(*args, **kwargs):
        raise hub_connection_error()

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", unreachable)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", unreachable)
    cache = tmp_path / "hf-cache"
    with pytest.raises(ConnectionError) as e:
        crate_core.from_pretrained("org/name", local_files_only=False, cache_dir=cache)
    msg = str(e.value)
    assert msg.startswith("org/name is neither a local folder nor in the local Hugging Face cache, and the network is unreachable")
    assert "\n" not in msg and "local_files_only" not in msg
    assert e.value.__cause__ is None and e.value.__suppress_context__  # the client's chain is not printed
    with pytest.raises(FileNotFoundError, match="org/name is neither .*; pass local_files_only=False"):
        crate_core.from_pretrained("org/name", cache_dir=cache)  # offline (the default): downloading is the advice


def test_push_to_hub_uploads_the_export_with_a_card(tmp_path, monkeypatch):
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    hub.save_pretrained(make_model(), run / "final")
    (run / "run_config.json").write_text(json.dumps({"command": ["tools/train_toy.py", "--steps", "40"]}))
    (run / "train_result.json").write_text(json.dumps({"steps": 40, "loss": 0.125, "val_top1": 0.9, "params": 123}))
    seen = {}

    class FakeApi:
        def __init__(self, token=None):
            seen["token"] = token

        def create_repo(self, repo_id, private=None, exist_ok=False):
            seen["repo"] = (repo_id, private, exist_ok)

        def upload_folder(self, repo_id, folder_path, revision=None, commit_message="", allow_patterns=None):
            seen["files"] = sorted(os.listdir(folder_path))
            seen["card"] = open(os.path.join(folder_path, "README.md")).read()
            return "https://huggingface.co/org/x/commit/123"

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = crate_core.push_to_hub(run / "final", "org/x", token="t", private=True)
    assert url.endswith("/commit/123") and seen["repo"] == ("org/x", True, True) and seen["token"] == "t"
    assert seen["files"] == ["README.md", "config.json", "model.safetensors"]
    assert sorted(os.listdir(run / "final")) == ["config.json", "model.safetensors"]  # the export is not changed
    card = seen["card"]
    assert card.startswith("---\n") and "library_name: crate" in card and "license: mit" in card
    assert "tools/train_toy.py --steps 40" in card  # the training command
    assert "| loss | 0.125 |" in card and "| val_top1 | 0.9 |" in card and "| steps | 40 |" in card
    assert "| depth | `2` |" in card and "TinyModel" in card
    assert "White-Box Transformers via Sparse Rate Reduction" in card
    crate_core.push_to_hub(make_model(), "org/y")
    assert seen["files"] == ["README.md", "config.json", "model.safetensors"]


def test_destination_rules(tmp_path):
    model = make_model()
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="exists and is not a folder"):
        hub.save_pretrained(model, tmp_path / "file", overwrite=True)
    busy = tmp_path / "busy"
    (busy / "sub").mkdir(parents=True)
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"busy: holds other files \(notes.txt, sub\); .*overwrite=True"):
        hub.save_pretrained(model, busy)
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt", "sub"]
    hub.save_pretrained(model, busy, overwrite=True, model_card=True)
    assert sorted(p.name for p in busy.iterdir()) == ["README.md", "config.json", "model.safetensors", "notes.txt", "sub"]
    hub.save_pretrained(make_model(depth=3), busy, overwrite=True)  # again: only our files are replaced
    assert len(crate_core.from_pretrained(busy).trunk.layers) == 3 and (busy / "notes.txt").read_text() == "mine"
    hf_like = tmp_path / "hf"  # a transformers export has the same file names but is not ours
    hf_like.mkdir()
    (hf_like / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="holds other files"):
        hub.save_pretrained(model, hf_like)
    empty = tmp_path / "empty"
    empty.mkdir()
    hub.save_pretrained(model, empty)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_overwrite_refuses_a_user_file_of_an_export_name(tmp_path):
    """overwrite writes next to the user's files and replaces a previous export's own files, never a user's
    file of the same name (their config.json, README.md): that is refused by name and left as it was."""
    model = make_model()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"learning_rate": 0.1}')
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds other files \\(config.json, notes.txt\\)"):
        hub.save_pretrained(model, mine)
    with pytest.raises(ValueError, match=r"mine: config.json is not from a crate export.*move it away") as e:
        hub.save_pretrained(model, mine, overwrite=True)
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in mine.iterdir()) == ["config.json", "notes.txt"]
    assert (mine / "config.json").read_text() == '{"learning_rate": 0.1}'  # untouched, nothing half-written
    (mine / "config.json").unlink()
    (mine / "README.md").write_text("my notes")
    hub.save_pretrained(model, mine, overwrite=True)  # no card written: the user's README.md is not in the way
    assert (mine / "README.md").read_text() == "my notes"
    with pytest.raises(ValueError, match="README.md is not from a crate export"):
        hub.save_pretrained(model, mine, overwrite=True, model_card=True)
    (mine / "README.md").unlink()
    hub.save_pretrained(model, mine, overwrite=True, model_card=True)  # the export's own files: replaced
    hub.save_pretrained(make_model(depth=3), mine, overwrite=True, model_card=True)
    assert sorted(p.name for p in mine.iterdir()) == ["README.md", "config.json", "model.safetensors", "notes.txt"]
    assert len(crate_core.from_pretrained(mine).trunk.layers) == 3 and (mine / "notes.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_exports_respect_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        out = hub.save_pretrained(make_model(), tmp_path / "e", model_card=True)
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o750
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {
        "config.json": 0o640, "model.safetensors": 0o640, "README.md": 0o640}


def test_model_card_for_an_export_already_written(tmp_path):
    run = tmp_path / "r"
    out = hub.save_pretrained(make_model(ista="alpha"), run / "final")
    (run / "train_result.json").write_text(json.dumps({"loss": 1.5}))
    card = hub.write_model_card(out).read_text()
    assert "| loss | 1.5 |" in card and "Scaling White-Box Transformers for Vision" in card  # CRATE-alpha citation
    assert len(crate_core.from_pretrained(out).trunk.layers) == 2  # a card does not stop the folder loading


def test_save_and_load_round_trip(tmp_path):
    model = make_model(ista="alpha", sizes=(3, 4, 5))
    out = crate_core.save_pretrained(model, tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((out / "config.json").read_text())
    assert meta["config"]["ista"] == "alpha" and meta["model_class"].endswith(":TinyModel")
    loaded = crate_core.from_pretrained(out)
    assert type(loaded) is TinyModel and loaded.config == model.config
    assert loaded.config.sizes == (3, 4, 5)  # tuples survive JSON
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), model(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="holds a TinyModel, not a OtherModel"):
        crate_core.from_pretrained(out, expected=OtherModel)


def test_task_of_a_class_no_preset_uses_is_unknown(tmp_path):
    """from_pretrained(task=...) refuses an export whose class builds presets of another task
    (tests/tools/test_tool_errors.py); a class no preset uses has no known task and passes."""
    out = crate_core.save_pretrained(make_model(), tmp_path / "export")
    assert hub.class_task(hub.read_config(out)["model_class"]) is None
    assert isinstance(crate_core.from_pretrained(out, task="classify"), TinyModel)


def test_overwrite_replaces_export_and_leaves_no_temp_dirs(tmp_path):
    crate_core.save_pretrained(make_model(depth=1), tmp_path / "export")
    crate_core.save_pretrained(make_model(depth=3), tmp_path / "export")
    assert len(crate_core.from_pretrained(tmp_path / "export").trunk.layers) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["export"]


def test_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json in"):
        crate_core.from_pretrained(tmp_path / "nowhere")
    out = crate_core.save_pretrained(make_model(), tmp_path / "export")
    (out / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors in"):
        crate_core.from_pretrained(out)


def test_corrupt_files_are_clear_errors(tmp_path):
    out = crate_core.save_pretrained(make_model(), tmp_path / "export")
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        crate_core.from_pretrained(out)
    weights.write_bytes(b"not safetensors at all")
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        crate_core.from_pretrained(out)
    (out / "config.json").write_text("{ broken")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        crate_core.from_pretrained(out)
    (out / "config.json").write_text(json.dumps({"config": {}}))
    with pytest.raises(ValueError, match="lacks the field 'model_class'"):
        crate_core.from_pretrained(out)


def test_weights_of_another_shape_are_a_clear_error(tmp_path):
    out = crate_core.save_pretrained(make_model(depth=2), tmp_path / "export")
    meta = json.loads((out / "config.json").read_text())
    meta["config"]["depth"] = 3
    (out / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="does not fit TinyModel: missing"):
        crate_core.from_pretrained(out)
    meta["config"]["colour"] = "red"
    (out / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"fields \['colour'\]"):
        crate_core.from_pretrained(out)


def test_failed_save_keeps_existing_export(tmp_path, monkeypatch):
    out = crate_core.save_pretrained(make_model(depth=1), tmp_path / "export")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    class NoConfig(nn.Module):
        pass

    with pytest.raises(ValueError, match="must be a dataclass instance"):
        crate_core.save_pretrained(NoConfig(), out)

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(crate_core.hub, "save_model", broken_save)
    with pytest.raises(OSError, match="disk full"):
        crate_core.save_pretrained(make_model(depth=3), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no half-written temp folder left
    monkeypatch.undo()
    assert len(crate_core.from_pretrained(out).trunk.layers) == 1
