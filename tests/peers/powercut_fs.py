"""A FUSE file system that models what a power cut does to data not yet made durable.

    python powercut_fs.py MOUNTPOINT CONTROL_SOCKET IMAGE

Everything lives in memory, in two layers:

- the durable layer: what a disk would hold after losing power. A file's bytes and size reach it
  when the file is fsynced (fsync or fdatasync; sync_file_range is never forwarded to FUSE and so
  makes nothing durable). A directory's entries (creates, renames, unlinks, mkdirs, rmdirs in it)
  reach it when the directory itself is fsynced: strict POSIX, as some file systems and mount
  options behave;
- the volatile layer: every other change, visible to readers as usual.

A line on the control socket (a Unix socket outside the mount) drives it:

    stats                 -> "ok files=F dirty_pages=P dirty_dirs=D"
    cut whole             -> drops the volatile layer wholly
    cut torn SEED [KEEP]  -> each pending 4 KiB page reaches the durable layer with probability
                             KEEP (default 0.5), each pending size change and each directory's
                             pending entries likewise: random subsets, reproducible from SEED

A cut answers "ok cut kept_pages=K dropped_pages=D kept_dirs=.. dropped_dirs=.. files=N" once the
durable layer is written to IMAGE. From then on the machine is off: every operation fails with
EIO until the file system is unmounted. Started again with the same IMAGE, it mounts exactly the
durable state ("reboot"). Prints READY once mounted and listening.

Mount options keep the kernel from serving anything stale: direct_io (no page cache), attribute,
entry and negative timeouts 0.
"""

import errno
import os
import pickle
import random
import socket
import stat
import sys
import threading
import time

from fuse import FUSE, FuseOSError, Operations

PAGE = 4096


class Node:
    """One inode. Files hold current and durable bytes; directories current and durable
    entries."""

    def __init__(self, ino, mode):
        self.ino = ino
        self.mode = mode
        now = time.time_ns()
        self.atime = self.mtime = self.ctime = now
        self.uid = os.getuid()
        self.gid = os.getgid()
        if stat.S_ISDIR(mode):
            self.entries = {}
            self.dentries = {}
        else:
            self.data = bytearray()
            self.ddata = bytearray()
            # Pages written (or exposed by a size change) since the last fsync.
            self.dirty = set()
        self.link = None  # symlink target

    def is_dir(self):
        return stat.S_ISDIR(self.mode)

    def mark(self, start, end):
        """Marks the pages holding bytes [start, end) as pending."""
        if end > start:
            self.dirty.update(range(start // PAGE, (end + PAGE - 1) // PAGE))

    def file_pending(self):
        return bool(self.dirty) or len(self.data) != len(self.ddata)

    def dir_pending(self):
        return self.entries != self.dentries

    def sync_file(self):
        size = len(self.data)
        if len(self.ddata) != size:
            self.ddata[size:] = b""
            self.ddata.extend(bytes(size - len(self.ddata)))
        for p in self.dirty:
            a = p * PAGE
            if a < size:
                b = min(a + PAGE, size)
                self.ddata[a:b] = self.data[a:b]
        self.dirty.clear()

    def sync_dir(self):
        self.dentries = dict(self.entries)

    def cut_file(self, rng, keep):
        """The durable layer after a cut: pending pages and size each kept with `keep`."""
        kept = dropped = 0
        size = len(self.ddata)
        if len(self.data) != size and rng.random() < keep:
            size = len(self.data)
        self.ddata[size:] = b""
        self.ddata.extend(bytes(size - len(self.ddata)))
        for p in sorted(self.dirty):
            if rng.random() < keep:
                kept += 1
                a = p * PAGE
                if a < size:
                    b = min(a + PAGE, size)
                    chunk = bytes(self.data[a:b])
                    chunk += bytes(b - a - len(chunk))
                    self.ddata[a:b] = chunk
            else:
                dropped += 1
        self.dirty.clear()
        self.data = bytearray(self.ddata)
        return kept, dropped


class PowerCutFs(Operations):
    use_ns = True

    def __init__(self, control, image):
        self.mutex = threading.RLock()
        self.control = control
        self.image = image
        self.off = False
        self.fhs = {}
        self.next_fh = 1
        if os.path.exists(image):
            with open(image, "rb") as f:
                self.root, self.next_ino = pickle.load(f)
        else:
            self.root = Node(1, stat.S_IFDIR | 0o755)
            self.next_ino = 2

    # --- helpers -------------------------------------------------------------------------------

    def _check(self):
        if self.off:
            raise FuseOSError(errno.EIO)

    def _walk(self, path):
        node = self.root
        for part in path.split("/"):
            if not part:
                continue
            if not node.is_dir():
                raise FuseOSError(errno.ENOTDIR)
            node = node.entries.get(part)
            if node is None:
                raise FuseOSError(errno.ENOENT)
        return node

    def _parent(self, path):
        head, name = path.rstrip("/").rsplit("/", 1)
        parent = self._walk(head)
        if not parent.is_dir():
            raise FuseOSError(errno.ENOTDIR)
        return parent, name

    def _node(self, path, fh):
        if fh is not None and fh in self.fhs:
            return self.fhs[fh]
        return self._walk(path)

    def _new(self, mode):
        node = Node(self.next_ino, mode)
        self.next_ino += 1
        return node

    @staticmethod
    def _touch(*dirs):
        """A directory's entries changed: its mtime and ctime move, as on any file system."""
        now = time.time_ns()
        for d in dirs:
            d.mtime = d.ctime = now

    def _open_fh(self, node):
        fh = self.next_fh
        self.next_fh += 1
        self.fhs[fh] = node
        return fh

    def _all_nodes(self):
        """Every node reachable through current or durable entries, by inode number."""
        seen = {}
        stack = [self.root]
        while stack:
            n = stack.pop()
            if n.ino in seen:
                continue
            seen[n.ino] = n
            if n.is_dir():
                stack.extend(n.entries.values())
                stack.extend(n.dentries.values())
        for n in self.fhs.values():
            seen.setdefault(n.ino, n)
        return [seen[k] for k in sorted(seen)]

    # --- the control channel -------------------------------------------------------------------

    def stats(self):
        nodes = self._all_nodes()
        files = [n for n in nodes if not n.is_dir()]
        pages = sum(len(n.dirty) for n in files)
        dirs = sum(1 for n in nodes if n.is_dir() and n.dir_pending())
        return f"ok files={len(files)} dirty_pages={pages} dirty_dirs={dirs}"

    def cut(self, rng, keep):
        kept = dropped = kept_dirs = dropped_dirs = 0
        for n in self._all_nodes():
            if n.is_dir():
                if n.dir_pending():
                    if rng.random() < keep:
                        kept_dirs += 1
                        n.sync_dir()
                    else:
                        dropped_dirs += 1
            elif n.file_pending():
                k, d = n.cut_file(rng, keep)
                kept += k
                dropped += d
        # What the disk holds: the durable entries from the root down.
        seen = set()
        stack = [self.root]
        files = 0
        while stack:
            n = stack.pop()
            if n.ino in seen:
                continue
            seen.add(n.ino)
            if n.is_dir():
                n.entries = dict(n.dentries)
                stack.extend(n.entries.values())
            else:
                files += 1
                n.data = bytearray(n.ddata)
        tmp = self.image + ".tmp"
        with open(tmp, "wb") as f:
            pickle.dump((self.root, self.next_ino), f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, self.image)
        self.off = True
        return (
            f"ok cut kept_pages={kept} dropped_pages={dropped} kept_dirs={kept_dirs} "
            f"dropped_dirs={dropped_dirs} files={files}"
        )

    def command(self, line):
        words = line.split()
        with self.mutex:
            if words == ["stats"]:
                return self.stats()
            if self.off:
                return "err the power is already off"
            if words == ["cut", "whole"]:
                return self.cut(random.Random(0), 0.0)
            if len(words) in (3, 4) and words[:2] == ["cut", "torn"]:
                keep = float(words[3]) if len(words) == 4 else 0.5
                return self.cut(random.Random(int(words[2])), keep)
        return f"err unknown command: {line.strip()}"

    def serve(self, sock):
        while True:
            conn, _ = sock.accept()
            with conn, conn.makefile("rw") as f:
                for line in f:
                    try:
                        reply = self.command(line)
                    except Exception as e:  # report, keep serving
                        reply = f"err {type(e).__name__}: {e}"
                    f.write(reply + "\n")
                    f.flush()

    def init(self, path):
        if os.path.exists(self.control):
            os.unlink(self.control)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(self.control)
        sock.listen(4)
        threading.Thread(target=self.serve, args=(sock,), daemon=True).start()
        print("READY", flush=True)

    # --- file system operations ----------------------------------------------------------------

    def getattr(self, path, fh=None):
        with self.mutex:
            self._check()
            n = self._node(path, fh)
            size = 0 if n.is_dir() else len(n.data)
            if n.link is not None:
                size = len(n.link)
            return {
                "st_mode": n.mode,
                "st_ino": n.ino,
                "st_nlink": 2 if n.is_dir() else 1,
                "st_size": size,
                "st_blocks": (size + 511) // 512,
                "st_uid": n.uid,
                "st_gid": n.gid,
                "st_atime": n.atime,
                "st_mtime": n.mtime,
                "st_ctime": n.ctime,
            }

    def access(self, path, amode):
        with self.mutex:
            self._check()
            self._walk(path)
            return 0

    def readdir(self, path, fh):
        with self.mutex:
            self._check()
            n = self._walk(path)
            return [".", ".."] + list(n.entries)

    def opendir(self, path):
        with self.mutex:
            self._check()
            n = self._walk(path)
            if not n.is_dir():
                raise FuseOSError(errno.ENOTDIR)
            return self._open_fh(n)

    def releasedir(self, path, fh):
        with self.mutex:
            self.fhs.pop(fh, None)
            return 0

    def fsyncdir(self, path, datasync, fh):
        with self.mutex:
            self._check()
            self._node(path, fh).sync_dir()
            return 0

    def mkdir(self, path, mode):
        with self.mutex:
            self._check()
            parent, name = self._parent(path)
            if name in parent.entries:
                raise FuseOSError(errno.EEXIST)
            parent.entries[name] = self._new(stat.S_IFDIR | (mode & 0o7777))
            self._touch(parent)
            return 0

    def rmdir(self, path):
        with self.mutex:
            self._check()
            parent, name = self._parent(path)
            n = parent.entries.get(name)
            if n is None:
                raise FuseOSError(errno.ENOENT)
            if not n.is_dir():
                raise FuseOSError(errno.ENOTDIR)
            if n.entries:
                raise FuseOSError(errno.ENOTEMPTY)
            del parent.entries[name]
            self._touch(parent)
            return 0

    def create(self, path, mode, fi=None):
        with self.mutex:
            self._check()
            parent, name = self._parent(path)
            n = parent.entries.get(name)
            if n is None:
                n = self._new(stat.S_IFREG | (mode & 0o7777))
                parent.entries[name] = n
                self._touch(parent)
            return self._open_fh(n)

    def open(self, path, flags):
        with self.mutex:
            self._check()
            return self._open_fh(self._walk(path))

    def release(self, path, fh):
        with self.mutex:
            self.fhs.pop(fh, None)
            return 0

    def flush(self, path, fh):
        # close(2): makes nothing durable.
        return 0

    def read(self, path, size, offset, fh):
        with self.mutex:
            self._check()
            n = self._node(path, fh)
            return bytes(n.data[offset : offset + size])

    def write(self, path, data, offset, fh):
        with self.mutex:
            self._check()
            n = self._node(path, fh)
            old = len(n.data)
            end = offset + len(data)
            if offset > old:
                n.data.extend(bytes(offset - old))
            n.data[offset:end] = data
            n.mark(min(old, offset), end)
            n.mtime = n.ctime = time.time_ns()
            return len(data)

    def truncate(self, path, length, fh=None):
        with self.mutex:
            self._check()
            n = self._node(path, fh)
            old = len(n.data)
            if length < old:
                n.data[length:] = b""
            else:
                n.data.extend(bytes(length - old))
            n.mark(min(old, length), max(old, length))
            n.mtime = n.ctime = time.time_ns()
            return 0

    def fsync(self, path, datasync, fh):
        with self.mutex:
            self._check()
            n = self._node(path, fh)
            if not n.is_dir():
                n.sync_file()
            return 0

    def unlink(self, path):
        with self.mutex:
            self._check()
            parent, name = self._parent(path)
            n = parent.entries.get(name)
            if n is None:
                raise FuseOSError(errno.ENOENT)
            if n.is_dir():
                raise FuseOSError(errno.EISDIR)
            del parent.entries[name]
            self._touch(parent)
            return 0

    def rename(self, old, new):
        with self.mutex:
            self._check()
            op, oname = self._parent(old)
            np, nname = self._parent(new)
            n = op.entries.get(oname)
            if n is None:
                raise FuseOSError(errno.ENOENT)
            target = np.entries.get(nname)
            if target is not None and target.is_dir():
                if not n.is_dir():
                    raise FuseOSError(errno.EISDIR)
                if target.entries:
                    raise FuseOSError(errno.ENOTEMPTY)
            del op.entries[oname]
            np.entries[nname] = n
            self._touch(op, np)
            return 0

    def link(self, target, source):
        raise FuseOSError(errno.EPERM)

    def symlink(self, target, source):
        with self.mutex:
            self._check()
            parent, name = self._parent(target)
            if name in parent.entries:
                raise FuseOSError(errno.EEXIST)
            n = self._new(stat.S_IFLNK | 0o777)
            n.link = source
            parent.entries[name] = n
            self._touch(parent)
            return 0

    def readlink(self, path):
        with self.mutex:
            self._check()
            n = self._walk(path)
            if n.link is None:
                raise FuseOSError(errno.EINVAL)
            return n.link

    def chmod(self, path, mode):
        with self.mutex:
            self._check()
            n = self._walk(path)
            n.mode = (n.mode & ~0o7777) | (mode & 0o7777)
            return 0

    def chown(self, path, uid, gid):
        with self.mutex:
            self._check()
            n = self._walk(path)
            if uid != -1 and uid != 0xFFFFFFFF:
                n.uid = uid
            if gid != -1 and gid != 0xFFFFFFFF:
                n.gid = gid
            return 0

    def utimens(self, path, times=None):
        with self.mutex:
            self._check()
            n = self._walk(path)
            now = time.time_ns()
            n.atime, n.mtime = times if times else (now, now)
            return 0

    def statfs(self, path):
        return {
            "f_bsize": PAGE,
            "f_frsize": PAGE,
            "f_blocks": 1 << 22,
            "f_bfree": 1 << 21,
            "f_bavail": 1 << 21,
            "f_files": 1 << 20,
            "f_ffree": 1 << 19,
            "f_favail": 1 << 19,
            "f_namemax": 255,
        }


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    mountpoint, control, image = sys.argv[1:]
    fs = PowerCutFs(os.path.abspath(control), os.path.abspath(image))
    FUSE(
        fs,
        mountpoint,
        foreground=True,
        fsname="powercut",
        direct_io=True,
        attr_timeout=0,
        entry_timeout=0,
        negative_timeout=0,
        hard_remove=True,
        big_writes=True,
        max_write=131072,
    )


if __name__ == "__main__":
    main()
