"""Exported models: ``model.safetensors`` + ``config.json`` (+ a ``README.md`` model card), moved
through the Hugging Face Hub with ``huggingface_hub``.

Convention for every model in the project: ``Model(config)`` builds it, ``model.config`` is the
dataclass it was built from. config.json records where both classes live, so
``from_pretrained(dir)`` rebuilds the model with no registry lookup.

- ``save_pretrained(model, dir)`` writes into a temporary folder, then renames it into place. A
  destination that is a file, or a folder holding anything but a previous export, is refused unless
  ``overwrite=True``; even then only a previous export's own files are replaced (a user's file of the
  same name, such as their own config.json, is refused by name), nothing else is deleted.
  Folders and files get the user's umask.
- ``from_pretrained("dir" or "org/name", revision=...)`` reads a local folder or a snapshot in the local
  Hugging Face cache (``huggingface_hub.snapshot_download``); offline by default
  (``local_files_only=True``), and ``HF_HUB_OFFLINE=1`` forbids the network even when asked for it. A repo
  that cannot be had is one line naming it and why (not cached; HF_HUB_OFFLINE; the Hub's answer; no network).
- ``push_to_hub(model or dir, "org/name")`` uploads an export with a generated model card
  (architecture, training command and metrics of the run, citation).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
EXPORT_FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)
FORMAT_VERSION = 1


def _qualname(obj: Any) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}:{cls.__qualname__}"


def _import(qualname: str) -> Any:
    module, _, attr = qualname.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def config_to_dict(config: Any) -> dict:
    if not dataclasses.is_dataclass(config):
        raise ValueError(f"model.config must be a dataclass instance, got {type(config).__name__}")
    return dataclasses.asdict(config)


def config_from_dict(cls: type, values: dict) -> Any:
    """Rebuild a dataclass config, converting lists back to tuples where the default is one."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"config.json has fields {unknown} that {cls.__name__} does not know")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**kwargs)


# -- writing ------------------------------------------------------------------------------------
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def has_export_config(path: Path) -> bool:
    """True when ``path/config.json`` is a crate export's (it names a model class): the export files beside it are ours."""
    try:
        return "model_class" in json.loads((path / CONFIG_NAME).read_text())
    except (OSError, ValueError, TypeError):  # absent, a folder, not JSON, or JSON that is not an object
        return False


def is_model_card(path: Path) -> bool:
    """True for a README.md that ``make_model_card`` wrote (its YAML front matter says ``library_name: crate``)."""
    try:
        head = path.read_text(errors="replace")[:4096]
    except OSError:  # absent or a folder
        return False
    return head.startswith("---") and "\nlibrary_name: crate\n" in head.split("\n---", 1)[0] + "\n"


def is_export(path: Path) -> bool:
    """True for a folder holding nothing but a crate export's own files (config.json naming a model class)."""
    names = {p.name for p in path.iterdir()}
    if not names or not names <= set(EXPORT_FILES) or any((path / n).is_dir() for n in names):
        return False
    return has_export_config(path)


class DestinationError(FileExistsError, ValueError):
    """The export destination holds something else (a user mistake: a ValueError for crate_core.cli)."""


def check_destination(path: str | os.PathLike, overwrite: bool = False, files: Sequence[str] = EXPORT_FILES) -> Path:
    """Refuse a destination that is a file, or a folder holding something other than an export, unless overwrite.
    With overwrite, ``files`` (the names about to be written) may replace only a previous export's files: the
    weights and config.json when config.json is a crate export's, README.md when it is a card this module
    generated. One that is the user's is refused by name."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DestinationError(f"{path}: exists and is not a folder; choose another destination")
    if not path.is_dir() or not any(path.iterdir()) or is_export(path):
        return path
    if not overwrite:
        others = sorted(p.name for p in path.iterdir())
        shown = ", ".join(others[:6]) + (", ..." if len(others) > 6 else "")
        raise DestinationError(
            f"{path}: holds other files ({shown}); choose an empty folder, or pass overwrite=True (--overwrite) "
            "to write the export next to them (nothing else is deleted)"
        )
    config_ours = has_export_config(path)

    def ours(name: str) -> bool:
        if name == CARD_NAME:
            return is_model_card(path / name)
        return config_ours and (path / name).is_file()

    theirs = [n for n in files if (path / n).exists() and not ours(n)]
    if theirs:
        one = len(theirs) == 1
        raise DestinationError(
            f"{path}: {', '.join(theirs)} {'is' if one else 'are'} not from a crate export, and overwrite replaces "
            f"only an export's own files; move {'it' if one else 'them'} away or choose another folder"
        )
    return path


def save_pretrained(
    model: nn.Module,
    path: str | os.PathLike,
    extra: dict | None = None,
    overwrite: bool = False,
    model_card: bool | str = False,
) -> Path:
    """Write ``path/model.safetensors`` and ``path/config.json`` (and ``README.md`` when ``model_card`` is
    True or a text) through a temporary folder. ``path`` may be absent, empty or a previous export;
    anything else needs ``overwrite=True``, which replaces only a previous export's files (a user's file of the
    same name is refused by name)."""
    files = (WEIGHTS_NAME, CONFIG_NAME) + ((CARD_NAME,) if model_card else ())
    path = check_destination(path, overwrite, files)
    config = getattr(model, "config", None)
    meta = {
        "format_version": FORMAT_VERSION,
        "model_class": _qualname(model),
        "config_class": _qualname(config),
        "config": config_to_dict(config),
        **(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; an export is shared like any folder
        save_model(model, str(tmp / WEIGHTS_NAME))
        os.chmod(tmp / WEIGHTS_NAME, 0o666 & ~_umask())  # safetensors writes 0600 whatever the umask
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2))
        if model_card:
            card = model_card if isinstance(model_card, str) else make_model_card(model, meta, path)
            (tmp / CARD_NAME).write_text(card)
        _install(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # leave no half-written export behind
        raise
    return path


def _install(tmp: Path, path: Path) -> None:
    """Move the finished export ``tmp`` to ``path``: one rename when ``path`` is absent, empty or a previous
    export (set aside, then removed: its files are ours), else file by file next to what is there."""
    if not path.exists():
        tmp.rename(path)
    elif not any(path.iterdir()):
        path.rmdir()
        tmp.rename(path)
    elif is_export(path):
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        for f in tmp.iterdir():
            os.replace(f, path / f.name)
        tmp.rmdir()


# -- reading ------------------------------------------------------------------------------------
def read_config(path: str | os.PathLike) -> dict:
    path = Path(path)
    cfg_file = path / CONFIG_NAME
    if not cfg_file.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {path} (expected an exported model directory)")
    try:
        meta = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_file} is not valid JSON: {e}") from e
    for key in ("model_class", "config_class", "config"):
        if key not in meta:
            raise ValueError(f"{cfg_file} lacks the field {key!r}: not a crate export")
    return meta


def _is_repo_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def resolve(
    name_or_path: str | os.PathLike,
    revision: str | None = None,
    local_files_only: bool | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """A local folder, or the snapshot of Hub repo ``org/name`` at ``revision`` in the Hugging Face cache.
    ``local_files_only`` defaults to True (no network); ``HF_HUB_OFFLINE=1`` wins over False."""
    path = Path(name_or_path)
    if path.is_dir() or not _is_repo_id(str(name_or_path)):
        if revision is not None:
            raise ValueError(f"revision={revision!r} applies to Hub repos, and {path} is a local path")
        return path
    from huggingface_hub import constants as hf_constants
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    offline = True if local_files_only is None else local_files_only
    try:
        return Path(
            snapshot_download(
                str(name_or_path),
                revision=revision,
                cache_dir=cache_dir,
                local_files_only=offline,
                allow_patterns=list(EXPORT_FILES),
            )
        )
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, FileNotFoundError) as e:
        at = f" at revision {revision!r}" if revision else ""
        missing = f"{name_or_path}{at} is neither a local folder nor in the local Hugging Face cache"
        if offline:
            raise FileNotFoundError(f"{missing}; pass local_files_only=False (with HF_HUB_OFFLINE unset) to download it") from e
        # the download was asked for: say why it did not happen (huggingface_hub chains the cause of its look-up)
        cause = e.__cause__
        # huggingface_hub >= 0.26 raises (or chains) OfflineModeIsEnabled; 0.25 chains a plain ConnectionError,
        # so its offline flag is read as well
        if isinstance(e, OfflineModeIsEnabled) or isinstance(cause, OfflineModeIsEnabled) or hf_constants.HF_HUB_OFFLINE:
            raise FileNotFoundError(f"{missing}, and HF_HUB_OFFLINE is set; unset it to download") from None
        if isinstance(cause, HfHubHTTPError):
            raise FileNotFoundError(f"{missing}, and the Hub answered: {' '.join(str(cause).split())}") from None
        reason = f" ({type(cause).__name__})" if cause is not None else ""
        raise ConnectionError(f"{missing}, and the network is unreachable{reason}") from None
    except HfHubHTTPError as e:
        raise FileNotFoundError(f"{name_or_path}: the Hub answered {' '.join(str(e).split())}") from None


def class_task(model_class: str) -> str | None:
    """The registry task (``crate_core.registry.TASKS``) of the presets built by ``model_class`` ("module:Class",
    as config.json records it), or None when no registered preset is built by that class (or several tasks are)."""
    from . import registry

    registry.list_models()  # imports the installed packages, which register their presets
    tasks = {e.task for e in registry.entries().values() if e.task and _qualname(e.builder) == model_class}
    return tasks.pop() if len(tasks) == 1 else None


def check_task(path: str | os.PathLike, model_class: str, tasks: Sequence[str]) -> None:
    """WrongTaskError naming the export, its class and task and the expected ones, when the export's class
    builds presets of another task; an export of a class no preset uses passes (its task is unknown)."""
    from .registry import WrongTaskError

    have = class_task(model_class)
    if have is not None and have not in tasks:
        want = " or ".join(repr(t) for t in tasks)
        raise WrongTaskError(
            f"{path} holds a {model_class.split(':')[-1]} (task {have!r}), this tool needs a model of task {want}"
        )


def from_pretrained(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    expected: type | None = None,
    revision: str | None = None,
    local_files_only: bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    task: str | Sequence[str] | None = None,
):
    """Rebuild the model saved by ``save_pretrained`` (a folder or Hub repo ``org/name``) and load its weights (strict).
    ``task`` (one of ``crate_core.registry.TASKS``, or several): refuse, before building anything, an export whose
    class builds presets of another task (a tool's one-line WrongTaskError, as ``registry.resolve_for_task``)."""
    path = resolve(path, revision=revision, local_files_only=local_files_only, cache_dir=cache_dir)
    meta = read_config(path)
    if task is not None:
        check_task(path, meta["model_class"], (task,) if isinstance(task, str) else tuple(task))
    model_cls, config_cls = _import(meta["model_class"]), _import(meta["config_class"])
    if expected is not None and not issubclass(model_cls, expected):
        raise ValueError(f"{path} holds a {model_cls.__name__}, not a {expected.__name__}")
    model = model_cls(config_from_dict(config_cls, meta["config"]))
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_NAME} in {path}")
    try:
        missing, unexpected = load_model(model, str(weights), strict=False, device=str(map_location))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{weights} is not a readable safetensors file: {e}") from e
    if missing or unexpected:
        raise ValueError(f"{weights} does not fit {model_cls.__name__}: missing {missing}, unexpected {unexpected}")
    return model


# -- model card and upload ----------------------------------------------------------------------
CITATIONS = {
    "crate": (
        "@inproceedings{yu2023whitebox,\n  title={White-Box Transformers via Sparse Rate Reduction},\n"
        "  author={Yu, Yaodong and others},\n  booktitle={NeurIPS},\n  year={2023},\n  eprint={2306.01129}\n}"
    ),
    "alpha": (
        "@inproceedings{yang2024scaling,\n  title={Scaling White-Box Transformers for Vision},\n"
        "  author={Yang, Jinrui and others},\n  booktitle={NeurIPS},\n  year={2024},\n  eprint={2405.20299}\n}"
    ),
    "mae": (
        "@inproceedings{pai2024masked,\n  title={Masked Completion via Structured Diffusion with White-Box "
        "Transformers},\n  author={Pai, Druv and others},\n  booktitle={ICLR},\n  year={2024},\n  eprint={2404.02446}\n}"
    ),
    "lm": (
        "@inproceedings{bai2025improving,\n  title={Improving Neuron-level Interpretability with White-box "
        "Language Models},\n  author={Bai, Hao and Ma, Yi},\n  booktitle={CPAL},\n  year={2025},\n  eprint={2410.16443}\n}"
    ),
}


def _citations(meta: dict) -> list[str]:
    config, cls = meta.get("config", {}), meta.get("model_class", "")
    out = [CITATIONS["crate"]]
    if config.get("ista") == "alpha":
        out.append(CITATIONS["alpha"])
    if "crate_mae" in cls:
        out.append(CITATIONS["mae"])
    if config.get("ista") == "lm" or str(meta.get("layout", "")).startswith("crate-lm"):
        out.append(CITATIONS["lm"])
    return out


def _run_files(export_dir: Path) -> tuple[dict, dict]:
    """(run_config.json, train_result.json) of the run an export sits in (``RUN/final/``), if present."""
    found = []
    for name in ("run_config.json", "train_result.json"):
        data = {}
        for folder in (export_dir, export_dir.parent):
            if (folder / name).is_file():
                try:
                    data = json.loads((folder / name).read_text())
                except (OSError, ValueError):
                    data = {}
                break
        found.append(data)
    return found[0], found[1]


def make_model_card(model: nn.Module | None, meta: dict, export_dir: str | os.PathLike) -> str:
    """A Hub model card (YAML metadata + Markdown): architecture, how it was made, metrics, citation."""
    from huggingface_hub import ModelCard, ModelCardData

    export_dir = Path(export_dir)
    run, result = _run_files(export_dir)
    cls = meta["model_class"].split(":")[-1]
    module = meta["model_class"].split(":")[0].split(".")[0]
    pipeline = {"crate_vision": "image-classification", "crate_text": "text-generation"}.get(module)
    if "Bert" in cls:
        pipeline = "fill-mask"
    data = ModelCardData(
        library_name="crate", license="mit", tags=["crate", "white-box-transformer", module], pipeline_tag=pipeline
    )
    n = sum(p.numel() for p in model.parameters()) if model is not None else result.get("params")
    lines = [f"# {export_dir.name}", "", f"A `{cls}` from the `crate` project (`{meta['model_class']}`)."]
    lines += ["", "## Architecture", "", "| field | value |", "|---|---|"]
    lines += [f"| {k} | `{v}` |" for k, v in meta["config"].items()]
    if n:
        lines += [f"| parameters | {n:,} |"]
    lines += ["", "## How it was made", ""]
    if "converted_from" in meta:
        lines += [f"Converted from the official checkpoint `{Path(meta['converted_from']).name}` "
                  f"(layout `{meta.get('layout', '?')}`) with `python -m crate_core.convert`."]
    command = run.get("command")
    if command:
        lines += ["Training command:", "", "```", " ".join(map(str, command)), "```"]
    if "trainer" in meta:
        lines += ["", f"Trainer: step {meta['trainer'].get('step')}, git `{meta['trainer'].get('git')}`."]
    metrics = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if metrics:
        lines += ["", "## Metrics (train_result.json)", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    lines += ["", "## Usage", "", "```python", "import crate_core",
              f'model = crate_core.from_pretrained("{export_dir.name}")  # a local folder or "org/name"', "```"]
    lines += ["", "## Citation", "", "```bibtex", "\n\n".join(_citations(meta)), "```", ""]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))


def write_model_card(export_dir: str | os.PathLike) -> Path:
    """(Re)write ``README.md`` of an existing export from its config.json and its run's JSON files."""
    export_dir = Path(export_dir)
    meta = read_config(export_dir)
    card = export_dir / CARD_NAME
    card.write_text(make_model_card(None, meta, export_dir))
    return card


def push_to_hub(
    model_or_dir: nn.Module | str | os.PathLike,
    repo_id: str,
    revision: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload crate model",
) -> str:
    """Upload an export (a model, or a folder written by ``save_pretrained``) to Hub repo ``repo_id``,
    with a model card; returns the commit URL. Needs the network and a token."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(model_or_dir, nn.Module):
            folder = save_pretrained(model_or_dir, Path(tmp) / repo_id.split("/")[-1], model_card=True)
        else:
            folder = Path(model_or_dir)
            read_config(folder)
            if not (folder / CARD_NAME).exists():  # card in a copy: the export folder is not changed
                folder = Path(shutil.copytree(folder, Path(tmp) / folder.name))
                (folder / CARD_NAME).write_text(make_model_card(None, read_config(folder), Path(model_or_dir)))
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id, folder_path=str(folder), revision=revision, commit_message=commit_message,
            allow_patterns=list(EXPORT_FILES),
        )
    return str(getattr(info, "commit_url", info))
