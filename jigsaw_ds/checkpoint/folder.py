"""What a checkpoint folder holds and whether it is complete, read without torch.

Finding a run's newest complete checkpoint and reading its metadata (manifest, jigsaw.json) takes file sizes
and JSON only, so it lives apart from the DCP reading and writing (sharded.py, manager.py): `jigsaw-ckpt info`
and the trainer's checks before any process group start without importing torch.
A checkpoint folder (checkpoints/step_XXXXXXXX/) holds the ranks' DCP files, DCP's `.metadata`, `jigsaw.json`
(META: format, step, run config, layout, tensor names and shapes) and, once complete, `MANIFEST.json`.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Optional

from ..errors import CorruptCheckpoint, NotACheckpoint

FORMAT = "jigsaw_ds.dcp.v1"
META = "jigsaw.json"
MANIFEST = "MANIFEST.json"


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_file(folder: str, name: str, files: dict) -> None:
    """The file as the manifest lists it (size, then sha256); CorruptCheckpoint naming it otherwise."""
    path = os.path.join(folder, name)
    if name not in files:
        raise CorruptCheckpoint(f"{path} is not in the checkpoint's manifest")
    if not os.path.exists(path):
        raise CorruptCheckpoint(f"{path} is missing")
    if os.path.getsize(path) != files[name]["bytes"] or sha256(path) != files[name]["sha256"]:
        raise CorruptCheckpoint(f"{path} does not match its manifest (size or sha256): the file was changed "
                                f"or damaged after the save")


def read_meta(folder: str, files: Optional[dict] = None) -> dict:
    """jigsaw.json of a checkpoint folder (checked against the manifest's `files` when given)."""
    path = os.path.join(folder, META)
    if files is not None:
        check_file(folder, META, files)
    if not os.path.exists(path):
        raise NotACheckpoint(f"{folder} is not a jigsaw_ds sharded checkpoint ({META} missing)")
    with open(path) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        raise NotACheckpoint(f"{path}: format {meta.get('format')!r}, expected {FORMAT}")
    return meta


def read_manifest(folder: str) -> tuple[dict, str]:
    """(the manifest's file list, '') if the checkpoint folder is complete: manifest and jigsaw.json present,
    every listed file there with its listed size (hashes are checked by whoever reads a file); else ({}, why)."""
    if not os.path.isdir(folder):
        return {}, "it does not exist"
    path = os.path.join(folder, MANIFEST)
    if not os.path.exists(path):
        return {}, "no manifest (the save did not finish)"
    try:
        with open(path) as f:
            manifest = json.load(f)
    except json.JSONDecodeError:
        return {}, "manifest is not valid JSON"
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return {}, "manifest has no file list"
    if META not in manifest["files"]:
        return {}, (f"not a sharded checkpoint ({META} missing: written by a jigsaw_ds before the "
                    f"DCP format; export it with that version's `jigsaw-ckpt export` and use --init-from FILE)")
    for name, meta in manifest["files"].items():
        if not (isinstance(meta, dict) and isinstance(meta.get("bytes"), int) and isinstance(meta.get("sha256"), str)):
            return {}, f"manifest entry of {name} lacks its size or sha256"
        fp = os.path.join(folder, name)
        if not os.path.exists(fp):
            return {}, f"file {name} is missing"
        if os.path.getsize(fp) != meta["bytes"]:
            return {}, f"file {name} does not match its manifest (size)"
    return manifest["files"], ""


def verify(folder: str) -> str:
    """'' if the checkpoint folder is complete (read_manifest), else why not."""
    return read_manifest(folder)[1]


class Checkpoints:
    """The checkpoint folders of a run's `checkpoints/` directory as they lie on disk (manager.CheckpointManager
    adds saving, loading and retention)."""

    def __init__(self, root: str):
        self.root = root

    def tags(self) -> list[str]:
        if not os.path.isdir(self.root):
            return []
        return sorted(t for t in os.listdir(self.root) if t.startswith("step_") and not t.endswith(".old"))

    def candidates(self) -> list[tuple[str, dict, str]]:
        """(tag, manifest files, why it is refused or '') of every checkpoint folder, newest first."""
        return [(tag, *read_manifest(os.path.join(self.root, tag))) for tag in reversed(self.tags())]

    def latest_complete(self) -> tuple[str, list[str]]:
        """(newest complete tag or '', reasons for each newer tag refused)."""
        refused = []
        for tag, _, why in self.candidates():
            if not why:
                return tag, refused
            refused.append(f"{tag}: {why}")
        return "", refused


def find_checkpoint(path: str) -> tuple[str, dict]:
    """(checkpoint folder, its manifest's files) for PATH = a checkpoint folder or a run directory (its newest
    complete checkpoint); NotACheckpoint saying why not."""
    if os.path.exists(os.path.join(path, MANIFEST)) or os.path.exists(os.path.join(path, META)):
        folder = path
    else:
        root = os.path.join(path, "checkpoints")
        tag, refused = Checkpoints(root).latest_complete()
        if not tag:
            raise NotACheckpoint(f"{path}: neither a checkpoint folder nor a run directory with a complete checkpoint "
                             f"({'; '.join(refused) or 'no ' + root})")
        folder = os.path.join(root, tag)
    files, why = read_manifest(folder)
    if why:
        raise NotACheckpoint(f"checkpoint {folder} is refused: {why}")
    return folder, files
