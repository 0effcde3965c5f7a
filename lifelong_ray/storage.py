"""One small wrapper over ``pyarrow.fs`` used by every durable part.

The root is a local path or any URI pyarrow understands (``s3://bucket/prefix``,
``gs://…``). Paths passed to methods are relative to the root, ``/``-separated.
Writes are atomic where the filesystem allows it: the bytes go to a temporary
name that is then moved into place (a rename on local disks); on object stores a
single PUT is already atomic.

    >>> import tempfile
    >>> s = Storage(tempfile.mkdtemp())
    >>> s.write_json("a/b.json", {"x": 1})
    >>> s.read_json("a/b.json")
    {'x': 1}
    >>> s.list("a")
    ['a/b.json']
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import pyarrow.fs as pafs


#: a new file that must not exist yet (the temporary name of an atomic write)
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def _fsync_dir(path: str) -> None:
    """Make a rename into ``path`` durable (the file's own fsync does not cover its name)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Storage:
    def __init__(self, root: str) -> None:
        self.uri = root
        if "://" in root:
            self.fs, base = pafs.FileSystem.from_uri(root)
        else:
            self.fs, base = pafs.LocalFileSystem(), os.path.abspath(root)
            os.makedirs(base, exist_ok=True)
        self.base = base.rstrip("/")
        self._local = isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def is_local(self) -> bool:
        """True for a local directory, False for an object store URI."""
        return self._local

    # -- paths ---------------------------------------------------------------
    def path(self, rel: str) -> str:
        """The filesystem path of ``rel`` (for pyarrow readers)."""
        return f"{self.base}/{rel}".rstrip("/") if rel else self.base

    def rel(self, full: str) -> str:
        return full[len(self.base) + 1 :] if full.startswith(self.base + "/") else full

    # -- writes --------------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes, *, fsync: bool = True) -> None:
        """Put ``data`` at ``rel`` atomically; in place when this returns.

        On a local disk ``fsync=True`` (the default) flushes the file and then its
        directory, so the file survives a power loss or kernel crash; ``fsync=False``
        only writes and renames it, which survives a crash of this process (the bytes
        are in the OS page cache) and costs tens of microseconds instead of
        milliseconds. Object stores ignore ``fsync``: a finished PUT is durable."""
        full = self.path(rel)
        parent = full.rsplit("/", 1)[0]
        if self._local:  # plain os calls: this is the prediction log's per-request path
            tmp = f"{parent}/.tmp-{uuid.uuid4().hex}"
            try:
                fd = os.open(tmp, _NEW_FILE, 0o666)
            except FileNotFoundError:  # first file of a directory (or retention removed it)
                os.makedirs(parent, exist_ok=True)
                fd = os.open(tmp, _NEW_FILE, 0o666)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if fsync:
                    os.fdatasync(fd)  # data and the size; the name is the directory's (below)
            except BaseException:
                os.close(fd)
                os.unlink(tmp)
                raise
            os.close(fd)
            os.replace(tmp, full)
            if fsync:
                _fsync_dir(parent)
        else:
            self.fs.create_dir(parent, recursive=True)
            with self.fs.open_output_stream(full) as out:
                out.write(data)

    def write_json(self, rel: str, obj: Any, *, fsync: bool = True) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=1, sort_keys=True).encode(), fsync=fsync)

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        """Put ``data`` at ``rel`` only if nothing is there yet; True if this call created it.

        Of writers racing for one name exactly one gets True, and a reader sees either
        nothing or all of ``data``. On a local disk the bytes go to a temporary file that
        is hard-linked to ``rel`` (``link`` fails if the name exists). Object stores need
        a conditional PUT (``If-None-Match: *``), which ``pyarrow.fs`` does not offer yet:
        there it is a check then a write, which two writers can both pass.

            >>> import tempfile
            >>> s = Storage(tempfile.mkdtemp())
            >>> s.create_exclusive("lease/1.json", b"a"), s.create_exclusive("lease/1.json", b"b")
            (True, False)
            >>> s.read_bytes("lease/1.json")
            b'a'
        """
        if not self._local:
            if self.exists(rel):
                return False
            self.write_bytes(rel, data)
            return True
        full = self.path(rel)
        parent = full.rsplit("/", 1)[0]
        os.makedirs(parent, exist_ok=True)
        tmp = f"{parent}/.tmp-{uuid.uuid4().hex}"
        fd = os.open(tmp, _NEW_FILE, 0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fdatasync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, full)
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        _fsync_dir(parent)
        return True

    def move(self, src: str, dst: str) -> None:
        """Move the file ``src`` to ``dst`` (replacing it). Idempotent: with ``src``
        already gone and ``dst`` in place it does nothing. A rename on a local disk;
        a copy then a delete on an object store."""
        full_src, full_dst = self.path(src), self.path(dst)
        if self._local:
            try:
                os.replace(full_src, full_dst)
            except FileNotFoundError:
                if not os.path.exists(full_src) and os.path.exists(full_dst):
                    return
                os.makedirs(full_dst.rsplit("/", 1)[0], exist_ok=True)
                os.replace(full_src, full_dst)
            return
        if not self.exists(src):
            if self.exists(dst):
                return
            raise FileNotFoundError(full_src)
        self.fs.create_dir(full_dst.rsplit("/", 1)[0], recursive=True)
        self.fs.move(full_src, full_dst)

    def delete(self, rel: str) -> None:
        """Remove the file ``rel``; nothing if it is not there."""
        try:
            self.fs.delete_file(self.path(rel))
        except FileNotFoundError:
            pass

    # -- reads ---------------------------------------------------------------
    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel)) as fh:
            return fh.read()

    def read_json(self, rel: str, default: Any = None) -> Any:
        if default is not None and not self.exists(rel):
            return default
        return json.loads(self.read_bytes(rel))

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def list(self, prefix: str, suffix: str = "", recursive: bool = True) -> list[str]:
        """Relative paths of files under ``prefix`` (sorted), skipping temporaries."""
        sel = pafs.FileSelector(self.path(prefix), allow_not_found=True, recursive=recursive)
        for attempt in range(3):
            try:  # a directory a concurrent writer creates or removes mid-walk fails the walk: walk again
                infos = self.fs.get_file_info(sel)
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise
        out = [
            self.rel(info.path)
            for info in infos
            if info.type == pafs.FileType.File
            and not info.base_name.startswith(".tmp-")
            and info.base_name.endswith(suffix)
        ]
        return sorted(out)

    def list_dirs(self, prefix: str) -> list[str]:
        sel = pafs.FileSelector(self.path(prefix), allow_not_found=True, recursive=False)
        return sorted(
            info.base_name for info in self.fs.get_file_info(sel) if info.type == pafs.FileType.Directory
        )

    def delete_dir(self, rel: str) -> None:
        if self.exists(rel):
            self.fs.delete_dir(self.path(rel))
