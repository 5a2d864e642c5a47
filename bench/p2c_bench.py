#!/usr/bin/env python3
"""p2c against `rsync -aHAX --numeric-ids` into an rsync daemon on loopback.

Same tree, same run, same page-cache policy for both tools. Prints a table of
min/median/max times, ratios (p2c / rsync) and bytes on the wire, and writes the
raw numbers as JSON. See bench/README.md for what each case measures.

Python 3 standard library only; run as root (the controller writes owners and
device nodes, rsync -X needs root on the receiving side, dropping caches needs root).
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MiB = 1024 * 1024
GiB = 1024 * MiB
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The performance targets: (case key, description, target ratio or None)
TARGETS = {
    "first_copy": 0.4,
    "second_pass": 0.2,
    "bigfile_delta": 0.3,
    "bigfile_wire_vs_change": 1.2,
    "second_server_wire_vs_size": 0.15,
    "agent_peak_mib": 64,
    "cutover_downtime_s": 5.0,
}


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes


class Procs:
    """Every long-running process this script started, so that it can stop them (by pid)."""

    def __init__(self):
        self.procs = []

    def start(self, argv, logfile, env=None):
        f = open(logfile, "ab")
        p = subprocess.Popen(
            [str(a) for a in argv],
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C reaches us; we stop them in order
        )
        f.close()
        self.procs.append(p)
        return p

    def stop(self, p, timeout=15):
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            except ProcessLookupError:
                pass
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self):
        for p in reversed(list(self.procs)):
            self.stop(p, timeout=5)


PROCS = Procs()


def run(argv, check=True, capture=True, timeout=None, env=None):
    argv = [str(a) for a in argv]
    r = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE if capture else None,
        text=True,
        timeout=timeout,
        env=env,
    )
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


def wait_for(what, cond, timeout=60.0, interval=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu(pid):
    """CPU seconds of a process, its threads and its reaped children."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    f = data[data.rfind(")") + 2 :].split()
    return sum(int(x) for x in f[11:15]) / CLK_TCK


class ThreadSampler:
    """CPU seconds per thread name (digits dropped: write-101 -> write-) of some processes,
    sampled from /proc/<pid>/task/*/stat while a step runs, so short-lived threads count too."""

    def __init__(self, pids, interval=0.25):
        import threading

        self.pids = pids  # label -> pid
        self.first = {}
        self.last = {}
        self.stop_ev = threading.Event()
        self.sample()
        self.t = threading.Thread(target=self._loop, daemon=True)
        self.t.start()

    def sample(self, first=False):
        for label, pid in self.pids.items():
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            for tid in tids:
                try:
                    data = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
                except OSError:
                    continue
                name = re.sub(r"\d+$", "", data[data.find("(") + 1 : data.rfind(")")])
                f = data[data.rfind(")") + 2 :].split()
                cpu = (int(f[11]) / CLK_TCK, int(f[12]) / CLK_TCK)
                key = (label, tid)
                if key not in self.first:
                    self.first[key] = (name, cpu if not self.t_started() else (0.0, 0.0))
                self.last[key] = (name, cpu)

    def t_started(self):
        return hasattr(self, "t")

    def _loop(self):
        while not self.stop_ev.wait(0.25):
            self.sample()

    def finish(self):
        self.stop_ev.set()
        self.t.join()
        self.sample()
        out = {}
        for key, (name, (user, system)) in self.last.items():
            u0, s0 = self.first[key][1]
            if user - u0 + system - s0 > 0:
                k = f"{key[0]}/{name}"
                o = out.setdefault(k, {"cpu": 0.0, "sys": 0.0})
                o["cpu"] = round(o["cpu"] + user - u0 + system - s0, 2)
                o["sys"] = round(o["sys"] + system - s0, 2)
        return dict(sorted(out.items(), key=lambda kv: -kv[1]["cpu"]))


def proc_status_kib(pid, key):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def tcp_bytes_received(port):
    """Bytes the listening side on `port` received over its established connections
    (TCP payload: TLS records, HTTP/2 frames, everything)."""
    r = run(["ss", "-tinH", "state", "established", f"( sport = :{port} )"], check=False)
    return sum(int(x) for x in re.findall(r"bytes_received:(\d+)", r.stdout))


def settle(cold):
    """Flush dirty pages of the previous step; with --cold also drop the page cache."""
    os.sync()
    if cold:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


# --------------------------------------------------------------------------- trees


def tree_stats(root):
    """Entries, regular files, and file bytes counting each inode once (hard links are
    carried once by both tools) as `bytes`, and once per path as `apparent_bytes`."""
    files = entries = size = apparent = 0
    seen = set()
    for dirpath, dirnames, filenames in os.walk(root):
        entries += len(dirnames)
        for n in filenames:
            entries += 1
            try:
                st = os.lstat(os.path.join(dirpath, n))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                files += 1
                apparent += st.st_size
                if st.st_nlink == 1 or (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    size += st.st_size
    return {"entries": entries, "files": files, "bytes": size, "apparent_bytes": apparent}


def regular_files(root):
    out = []
    for dirpath, _, filenames in os.walk(root):
        for n in filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_size > 0:
                out.append((p, st.st_size))
    out.sort()
    return out


def dir_size(p):
    total = 0
    for dirpath, _, filenames in os.walk(p):
        for n in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, n))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def read_tree(root):
    """Reads every file once, so that a warm run starts with the tree in the page cache."""
    buf = bytearray(MiB)
    for dirpath, _, filenames in os.walk(root):
        for n in filenames:
            p = os.path.join(dirpath, n)
            try:
                if not stat.S_ISREG(os.lstat(p).st_mode):
                    continue
                with open(p, "rb", buffering=0) as f:
                    while f.readinto(buf):
                        pass
            except OSError:
                pass


def overwrite_block(path, size, rng, block):
    """Overwrites `block` bytes (or the whole file) in place, keeps the size. Returns an undo record."""
    n = min(block, size)
    off = rng.randrange(0, size - n + 1)
    st = os.lstat(path)
    with open(path, "r+b") as f:
        f.seek(off)
        old = f.read(n)
        f.seek(off)
        f.write(os.urandom(n))
    return (path, off, old, st.st_atime_ns, st.st_mtime_ns)


def undo(records):
    for path, off, old, atime, mtime in records:
        with open(path, "r+b") as f:
            f.seek(off)
            f.write(old)
        os.utime(path, ns=(atime, mtime))


def pick_subtrees(root, count=4, share=8):
    """`count` disjoint directories of `root`, each at most 1/`share` of it, the largest such."""
    total = dir_size(root)
    limit = total / share
    cands = [(dir_size(p), p) for p in (os.path.join(root, n) for n in os.listdir(root)) if _isdir(p)]
    for _ in range(200):
        cands.sort(reverse=True)
        if not cands or cands[0][0] <= limit:
            break
        _, big = cands.pop(0)
        cands += [(dir_size(p), p) for p in (os.path.join(big, n) for n in os.listdir(big)) if _isdir(p)]
    cands.sort(reverse=True)
    picked = [c for c in cands if c[0] <= limit][:count]
    if len(picked) < count:
        raise RuntimeError(f"cannot find {count} subtrees of {root} for the parallel case")
    return [p for _, p in picked]


def _isdir(p):
    return os.path.isdir(p) and not os.path.islink(p)


# --------------------------------------------------------------------------- rsync


class RsyncDaemon:
    def __init__(self, work, dst):
        self.dir = work / "rsyncd"
        self.dir.mkdir(parents=True)
        self.dst = dst
        self.port = free_port()
        conf = self.dir / "rsyncd.conf"
        conf.write_text(
            "\n".join(
                [
                    f"pid file = {self.dir}/rsyncd.pid",
                    f"log file = {self.dir}/rsyncd.log",
                    "use chroot = no",
                    "uid = 0",
                    "gid = 0",
                    "numeric ids = yes",
                    "munge symlinks = no",
                    "max connections = 0",
                    "[bench]",
                    f"    path = {self.dst}",
                    "    read only = no",
                    "    use chroot = no",
                    "    numeric ids = yes",
                    "    uid = 0",
                    "    gid = 0",
                    "    munge symlinks = no",
                    "",
                ]
            )
        )
        self.proc = PROCS.start(
            ["rsync", "--daemon", "--no-detach", f"--config={conf}", "--address=127.0.0.1", f"--port={self.port}"],
            self.dir / "daemon.out",
        )
        wait_for("the rsync daemon", lambda: self._listening(), 20)

    def _listening(self):
        try:
            socket.create_connection(("127.0.0.1", self.port), 0.5).close()
            return True
        except OSError:
            return False

    def push_cmd(self, src, dest):
        return [
            "rsync",
            "-aHAX",
            "--numeric-ids",
            "--stats",
            f"{src}/",
            f"rsync://127.0.0.1:{self.port}/bench/{dest}/",
        ]

    def push(self, src, dest, cold=False):
        """One timed `rsync -aHAX --numeric-ids` push; returns a measurement dict."""
        settle(cold)
        cpu0 = proc_cpu(self.proc.pid)
        ru0 = os.times()
        t0 = time.perf_counter()
        r = run(self.push_cmd(src, dest), check=False)
        wall = time.perf_counter() - t0
        ru1 = os.times()
        if r.returncode not in (0, 24):  # 24: files vanished during the transfer
            raise RuntimeError(f"rsync exited {r.returncode}: {r.stderr}")
        # The daemon's per-connection child counts in its cutime once the daemon reaped it.
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        wait_for("the rsync daemon to reap its child", lambda: not children.read_text().strip(), 10, 0.05)
        return {
            "wall": wall,
            "wire_bytes": parse_stat(r.stdout, "Total bytes sent"),
            "received_bytes": parse_stat(r.stdout, "Total bytes received"),
            "sender_cpu": (ru1.children_user + ru1.children_system) - (ru0.children_user + ru0.children_system),
            "receiver_cpu": proc_cpu(self.proc.pid) - cpu0,
        }

    def remove(self, dest):
        remove_tree(self.dst / dest)

    def stop(self):
        PROCS.stop(self.proc)


def parse_stat(out, key):
    m = re.search(re.escape(key) + r":\s*([\d,.]+)", out)
    return int(re.sub(r"[,.]", "", m.group(1))) if m else None


# --------------------------------------------------------------------------- p2c


class Agent:
    def __init__(self, name, root, proc, state):
        self.name, self.root, self.proc, self.state = name, root, proc, state


class Controller:
    """A real `p2c-controller serve` with its own state dir and vz root, driven by the `p2c` CLI."""

    def __init__(self, bench, label):
        self.b = bench
        self.dir = bench.work / f"p2c-{label}"
        self.state = self.dir / "state"
        self.vz = bench.dest / f"vz-{label}"
        self.conf = self.dir / "conf"
        self.dir.mkdir(parents=True)
        self.port = free_port()
        self.agents = {}
        self.seen_passes = {}
        run(
            [
                bench.bin("p2c-controller"),
                "init",
                "--state-dir",
                self.state,
                "--listen",
                f"127.0.0.1:{self.port}",
                "--vz-root",
                self.vz,
                "--conf-dir",
                self.conf,
            ]
        )
        self.proc = PROCS.start([bench.bin("p2c-controller"), "serve", "--state-dir", self.state], self.dir / "controller.log")
        wait_for("the controller's admin socket", lambda: self.cli("agents", "--json", check=False).returncode == 0, 60)

    def cli(self, *args, check=True, timeout=None):
        return run([self.b.bin("p2c"), "--state-dir", self.state, *args], check=check, timeout=timeout)

    def add_agent(self, name, root):
        token = self.cli("token", "create", name).stdout.strip()
        astate = self.dir / f"agent-{name}"
        run([self.b.bin("p2c-agent"), "enroll", "--token", token, "--state-dir", astate])
        proc = PROCS.start(
            [self.b.bin("p2c-agent"), "run", "--state-dir", astate, "--root", root], self.dir / f"agent-{name}.log"
        )
        a = Agent(name, root, proc, astate)
        self.agents[name] = a

        def connected():
            if proc.poll() is not None:
                raise RuntimeError(f"agent {name} exited; see {self.dir}/agent-{name}.log")
            r = self.cli("agents", "--json", check=False)
            if r.returncode != 0:
                return False
            return any(x.get("name") == name and x.get("connected") for x in json.loads(r.stdout))

        wait_for(f"agent {name} to connect", connected, 60)
        return a

    def _measure(self, argv_list, cold, agent=None):
        """Runs one or more `p2c` commands at once; returns wall time, CPU and TCP deltas, outputs."""
        settle(cold)
        pids = {"controller": self.proc.pid, **{f"agent:{n}": a.proc.pid for n, a in self.agents.items()}}
        cpu0 = {k: proc_cpu(p) for k, p in pids.items()}
        tcp0 = tcp_bytes_received(self.port)
        watched = {"controller": self.proc.pid}
        if agent:
            watched["agent"] = self.agents[agent].proc.pid
        sampler = ThreadSampler(watched)
        t0 = time.perf_counter()
        ps = [
            subprocess.Popen(
                [str(x) for x in [self.b.bin("p2c"), "--state-dir", self.state, *argv]],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for argv in argv_list
        ]
        outs = []
        ends = []
        for p in ps:
            out, err = p.communicate()
            ends.append(time.perf_counter() - t0)
            outs.append((p.returncode, out, err))
        wall = time.perf_counter() - t0
        self.threads = sampler.finish()
        tcp = tcp_bytes_received(self.port) - tcp0
        cpu = {k: proc_cpu(p) - cpu0[k] for k, p in pids.items()}
        for (rc, out, err), argv in zip(outs, argv_list):
            if rc != 0:
                raise RuntimeError(f"p2c {' '.join(map(str, argv))} exited {rc}: {err.strip()}")
        return wall, ends, cpu, tcp, [json.loads(o) for _, o, _ in outs]

    def _new_passes(self, ctid, summary):
        seen = self.seen_passes.setdefault(ctid, set())
        new = [p for p in summary.get("passes", []) if p["pass"] not in seen]
        seen.update(p["pass"] for p in new)
        return new

    def _result(self, ctid, wall, cpu, tcp, summary, agent):
        new = self._new_passes(ctid, summary)
        return {
            "wall": wall,
            "pass_seconds": sum(p["seconds"] for p in new),
            "passes": len(new),
            "wire_bytes": sum(p["wire_bytes"] for p in new),
            "local_bytes": sum(p["local_bytes"] for p in new),
            "data_bytes": sum(p["data_bytes"] for p in new),
            "changed_bytes": sum(p["changed_bytes"] for p in new),
            "entries": max((p["entries"] for p in new), default=0),
            "tcp_bytes": tcp,
            "agent_cpu": cpu.get(f"agent:{agent}", 0.0),
            "controller_cpu": cpu["controller"],
            "downtime_seconds": summary.get("downtime_seconds"),
            "state": summary.get("state"),
            "verify_checked": (summary.get("verify") or {}).get("checked"),
            "threads_cpu": self.threads,
        }

    def migrate(self, agent, ctid, cold=False, one_pass=True):
        argv = ["migrate", agent, "--ctid", str(ctid), "--json"]
        if one_pass:
            argv += ["--max-passes", "1"]
        wall, _, cpu, tcp, (s,) = self._measure([argv], cold, agent)
        return self._result(ctid, wall, cpu, tcp, s, agent)

    def migrate_many(self, jobs, cold=False):
        """jobs: [(agent, ctid)] started at once; returns (wall, per-job results)."""
        argvs = [["migrate", a, "--ctid", str(c), "--json", "--max-passes", "1"] for a, c in jobs]
        wall, ends, cpu, tcp, sums = self._measure(argvs, cold)
        res = [self._result(c, e, cpu, 0, s, a) for (a, c), e, s in zip(jobs, ends, sums)]
        return wall, cpu, tcp, res

    def cutover(self, ctid, agent, cold=False):
        wall, _, cpu, tcp, (s,) = self._measure([["cutover", str(ctid), "--json"]], cold, agent)
        return self._result(ctid, wall, cpu, tcp, s, agent)

    def agent_hwm_mib(self, name):
        v = proc_status_kib(self.agents[name].proc.pid, "VmHWM")
        return None if v is None else v / 1024

    def controller_hwm_mib(self):
        v = proc_status_kib(self.proc.pid, "VmHWM")
        return None if v is None else v / 1024

    def stop(self, keep=False):
        for a in self.agents.values():
            PROCS.stop(a.proc)
        PROCS.stop(self.proc)
        if not keep:
            remove_tree(self.dir)
            remove_tree(self.vz)


class DestFs:
    """Where both tools write: a fresh ext4 file system on a sparse loop image for every run
    (like a new node's /vz), or a plain directory of the workdir (--dest-fs workdir)."""

    def __init__(self, work, mode, size):
        self.mode, self.size = mode, size
        self.mnt = work / "dest"
        self.img = work / "dest.img"
        self.mnt.mkdir()
        self.mounted = False

    def fresh(self):
        self.release()
        if self.mode == "loop":
            with open(self.img, "wb") as f:
                f.truncate(self.size)
            run(["mkfs.ext4", "-q", "-F", "-m", "0", self.img])
            # discard: files deleted in the image give their blocks back to the disk
            run(["mount", "-o", "loop,discard", self.img, self.mnt])
            self.mounted = True
        (self.mnt / "rsync").mkdir(exist_ok=True)

    def release(self, keep=False):
        if self.mounted:
            os.sync()
            r = run(["umount", self.mnt], check=False)
            if r.returncode != 0:
                time.sleep(2)
                run(["umount", "-l", self.mnt], check=False)
            self.mounted = False
        if keep:
            return
        if self.mode == "loop":
            self.img.unlink(missing_ok=True)
        else:
            for p in self.mnt.iterdir():
                remove_tree(p)


# --------------------------------------------------------------------------- the benchmark


class Bench:
    def __init__(self, args):
        self.a = args
        self.work = Path(args.workdir)
        self.bindir = Path(args.bin_dir)
        self.results = {}  # case -> tool -> metric -> [values per run]
        self.errors = []

    def bin(self, name):
        return self.bindir / name

    def record(self, case, tool, m):
        d = self.results.setdefault(case, {}).setdefault(tool, {})
        for k, v in m.items():
            d.setdefault(k, []).append(v)

    def wanted(self, n):
        return n in self.a.cases

    # ---- setup

    def setup(self):
        a = self.a
        tree = Path(a.tree).resolve()
        # The source is laid out as a server's root: a tree that has no etc/ of its own (like
        # /usr) goes to its own path below the root, next to a copy of this machine's /etc,
        # so the cutover's guest rewrite finds what it works on.
        self.src = self.work / "src" / "root"
        if (tree / "etc").is_dir() and (tree / "usr").is_dir():
            log(f"copying {tree} to the scratch source root (cp -a)")
            self.src.parent.mkdir(parents=True)
            run(["cp", "-a", "--", str(tree), str(self.src)])
        else:
            dest = self.src / tree.relative_to("/")
            log(f"copying {tree} to {dest} and /etc beside it (cp -a)")
            dest.parent.mkdir(parents=True)
            run(["cp", "-a", "--", str(tree), str(dest)])
            run(["cp", "-a", "--", "/etc", str(self.src / "etc")])
            # A server's fstab names its disks (the guest rewrite drops those lines). It also
            # keeps verification clear of a p2c bug: when the rewrite changes nothing in /etc,
            # the /etc/p2c it adds moves /etc's mtime and the cutover's verify fails.
            (self.src / "etc" / "fstab").write_text(
                "UUID=0a1b2c3d-0000-4000-8000-000000000001 / ext4 errors=remount-ro 0 1\n"
                "UUID=0a1b2c3d-0000-4000-8000-000000000002 none swap sw 0 0\n"
                "proc /proc proc defaults 0 0\n"
            )
        self.tree_info = tree_stats(self.src)
        log(
            f"source: {self.tree_info['files']} files, {self.tree_info['entries']} entries, "
            f"{self.tree_info['bytes'] / GiB:.2f} GiB"
        )
        self.files = regular_files(self.src)
        big = a.big_size if self.wanted(3) else 0
        self.destfs = DestFs(self.work, a.dest_fs, int(self.tree_info["bytes"] * 4.5) + 3 * big + 4 * GiB)
        self.dest = self.destfs.mnt
        self.destfs.fresh()
        self.daemon = RsyncDaemon(self.work, self.dest / "rsync")
        if self.wanted(3):
            self.make_bigfile()
        if self.wanted(6):
            self.subtrees = pick_subtrees(self.src, 4, a.parallel_share)
            self.subtree_sizes = [dir_size(p) for p in self.subtrees]
            log("parallel sources: " + ", ".join(f"{os.path.relpath(p, self.src)} ({s / MiB:.0f} MiB)" for p, s in zip(self.subtrees, self.subtree_sizes)))
        if not a.cold:
            log("warming the page cache with the source tree")
            read_tree(self.src)

    def make_second_server(self):
        """B = A with ~5% of the files changed or added (4/5 changed in place, 1/5 new)."""
        log("making the second server's tree (cp -al, then ~5% of the files changed or added)")
        self.src_b = self.work / "src-b" / "root"
        remove_tree(self.src_b.parent)  # a failed earlier run may have left it
        self.src_b.parent.mkdir(parents=True)
        # A hard-link farm saves a copy of the tree; a changed file is a new inode.
        run(["cp", "-al", "--", str(self.src), str(self.src_b)])
        rng = random.Random(4242)
        rel = [(os.path.relpath(p, self.src), size) for p, size in self.files]
        n = max(1, round(len(rel) * self.a.second_server_change / 100))
        n_new = n // 5
        changed = rng.sample(rel, n - n_new)
        for r, size in changed:
            p = os.path.join(self.src_b, r)
            tmp = p + ".p2c-bench-tmp"
            shutil.copy2(p, tmp)
            st = os.lstat(p)
            os.chown(tmp, st.st_uid, st.st_gid)
            os.chmod(tmp, stat.S_IMODE(st.st_mode))
            os.replace(tmp, p)
            overwrite_block(p, size, rng, 4096)
        bfiles = [(os.path.join(self.src_b, r), size) for r, size in rel]
        dirs = sorted({os.path.dirname(p) for p, _ in bfiles})
        sizes = [s for _, s in bfiles]
        added = 0
        for i in range(n_new):
            size = rng.choice(sizes)
            p = os.path.join(rng.choice(dirs), f"p2c-bench-new-{i}")
            with open(p, "wb") as f:
                f.write(os.urandom(size))
            added += size
        self.second_info = {
            "changed_files": len(changed),
            "added_files": n_new,
            "added_bytes": added,
            **tree_stats(self.src_b),
        }
        log(f"second server: {len(changed)} files changed, {n_new} added ({added / MiB:.1f} MiB new data)")

    def make_bigfile(self):
        size = self.a.big_size
        log(f"making a {size / GiB:.2f} GiB file of random data")
        self.big = self.work / "src-big" / "tree"
        self.big.mkdir(parents=True)
        with open(self.big / "disk.img", "wb") as f:
            left = size
            while left:
                n = min(left, 64 * MiB)
                f.write(os.urandom(n))
                left -= n

    # ---- cases

    def run_all(self, checkpoint):
        for r in range(self.a.runs):
            log(f"=== run {r + 1} of {self.a.runs}")
            if r:
                checkpoint()
                self.destfs.fresh()
            groups = []
            if self.wanted(1) or self.wanted(2) or self.wanted(4) or self.wanted(5) or self.wanted(7):
                groups.append(self.run_os_tree)
            if self.wanted(3):
                groups.append(self.run_bigfile)
            if self.wanted(6):
                groups.append(self.run_parallel)
            for g in groups:
                try:
                    g(r)
                except (RuntimeError, OSError, subprocess.SubprocessError, json.JSONDecodeError) as e:
                    # one failing case (a p2c bug) must not cost the others; it is reported
                    log(f"{g.__name__} failed in run {r + 1}: {e}")
                    self.errors.append({"run": r + 1, "group": g.__name__, "error": str(e)})

    def run_os_tree(self, r):
        """Cases 1, 2, 5, 7 and 4 on one controller (A in CT 101, B in CT 102)."""
        cold = self.a.cold
        ctl = Controller(self, f"os-{r}")
        try:
            ctl.add_agent("srv-a", self.src)
            dest = f"os-{r}"

            def p2c_first():
                m = ctl.migrate("srv-a", 101, cold)
                m["agent_hwm_mib"] = ctl.agent_hwm_mib("srv-a")
                self.record("first_copy", "p2c", m)
                log(f"p2c first copy: {m['wall']:.1f}s (pass {m['pass_seconds']:.1f}s), agent peak {m['agent_hwm_mib']:.1f} MiB")

            def rsync_first():
                m = self.daemon.push(self.src, dest, cold)
                self.record("first_copy", "rsync", m)
                log(f"rsync first copy: {m['wall']:.1f}s")

            # alternate who goes first, so neither always meets the other's leftovers
            for f in (p2c_first, rsync_first) if r % 2 == 0 else (rsync_first, p2c_first):
                f()
            m = ctl.migrate("srv-a", 101, cold)
            self.record("second_pass", "p2c", m)
            log(f"p2c second pass: {m['wall']:.1f}s (pass {m['pass_seconds']:.1f}s)")
            m = self.daemon.push(self.src, dest, cold)
            self.record("second_pass", "rsync", m)
            log(f"rsync second pass: {m['wall']:.1f}s")

            if self.wanted(7):
                rng = random.Random(700 + r)
                n = max(1, round(len(self.files) * self.a.cutover_change / 100))
                undo_log = [overwrite_block(p, s, rng, 4096) for p, s in rng.sample(self.files, n)]
                try:
                    m = ctl.cutover(101, "srv-a", cold)
                    m["changed_files"] = n
                    self.record("cutover", "p2c", m)
                    log(f"p2c cutover ({n} files changed): downtime {m['downtime_seconds']:.2f}s, final pass {m['pass_seconds']:.2f}s")
                    m = self.daemon.push(self.src, dest, cold)
                    self.record("cutover", "rsync", m)
                    log(f"rsync pass after the same change: {m['wall']:.1f}s")
                finally:
                    undo(undo_log)
            self.daemon.remove(dest)

            if self.wanted(4):
                # Made only now and removed after: while B's hard links share A's inodes, every
                # file of A has st_nlink 2, which the agent tracks (and which would inflate case 5).
                self.make_second_server()
                ctl.add_agent("srv-b", self.src_b)
                m = ctl.migrate("srv-b", 102, cold)
                m["size_bytes"] = self.second_info["bytes"]
                self.record("second_server", "p2c", m)
                log(f"p2c second server: {m['wall']:.1f}s, {m['wire_bytes'] / MiB:.1f} MiB on the wire")
                self.record("controller_mem", "p2c", {"controller_hwm_mib": ctl.controller_hwm_mib()})
                ctl.stop(keep=self.a.keep)  # frees the node's disk for rsync's copy of B
                m = self.daemon.push(self.src_b, f"b-{r}", cold)
                m["size_bytes"] = self.second_info["bytes"]
                self.record("second_server", "rsync", m)
                log(f"rsync second server (into an empty module dir): {m['wall']:.1f}s")
                self.daemon.remove(f"b-{r}")
                remove_tree(self.src_b.parent)
            else:
                self.record("controller_mem", "p2c", {"controller_hwm_mib": ctl.controller_hwm_mib()})
        finally:
            ctl.stop(keep=self.a.keep)

    def run_bigfile(self, r):
        cold = self.a.cold
        ctl = Controller(self, f"big-{r}")
        try:
            ctl.add_agent("srv-big", self.big)
            dest = f"big-{r}"
            m = ctl.migrate("srv-big", 103, cold)
            self.record("bigfile_first", "p2c", m)
            m = self.daemon.push(self.big, dest, cold)
            self.record("bigfile_first", "rsync", m)
            change = self.a.change_size
            size = self.a.big_size
            with open(self.big / "disk.img", "r+b") as f:
                f.seek((size - change) // 2 // 4096 * 4096)
                f.write(os.urandom(change))
            m = ctl.migrate("srv-big", 103, cold)
            self.record("bigfile_delta", "p2c", m)
            log(f"p2c 16 MiB in the big file: {m['wall']:.1f}s, {m['wire_bytes'] / MiB:.1f} MiB on the wire")
            m = self.daemon.push(self.big, dest, cold)
            self.record("bigfile_delta", "rsync", m)
            log(f"rsync 16 MiB in the big file: {m['wall']:.1f}s, {m['wire_bytes'] / MiB:.1f} MiB sent")
            self.daemon.remove(dest)
        finally:
            ctl.stop(keep=self.a.keep)

    def run_parallel(self, r):
        cold = self.a.cold
        total = sum(self.subtree_sizes)
        # one source at a time
        ctl = Controller(self, f"seq-{r}")
        try:
            walls = []
            for i, p in enumerate(self.subtrees):
                ctl.add_agent(f"par-{i}", p)
                walls.append(ctl.migrate(f"par-{i}", 200 + i, cold)["wall"])
            seq = sum(walls)
        finally:
            ctl.stop(keep=self.a.keep)
        ctl = Controller(self, f"par-{r}")
        try:
            for i, p in enumerate(self.subtrees):
                ctl.add_agent(f"par-{i}", p)
            wall, cpu, tcp, _ = ctl.migrate_many([(f"par-{i}", 200 + i) for i in range(4)], cold)
        finally:
            ctl.stop(keep=self.a.keep)
        self.record(
            "parallel",
            "p2c",
            {
                "seq_wall": seq,
                "par_wall": wall,
                "seq_mib_s": total / MiB / seq,
                "par_mib_s": total / MiB / wall,
                "speedup": seq / wall,
                "par_controller_cpu": cpu["controller"],
                "par_agents_cpu": sum(v for k, v in cpu.items() if k.startswith("agent:")),
                "par_tcp_bytes": tcp,
            },
        )
        log(f"p2c 4 sources: one at a time {seq:.1f}s, together {wall:.1f}s (x{seq / wall:.2f})")
        # rsync, the same
        walls = []
        for i, p in enumerate(self.subtrees):
            walls.append(self.daemon.push(p, f"seq-{r}-{i}", cold)["wall"])
        seq = sum(walls)
        settle(cold)
        t0 = time.perf_counter()
        ps = [
            subprocess.Popen(self.daemon.push_cmd(p, f"par-{r}-{i}"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for i, p in enumerate(self.subtrees)
        ]
        for p in ps:
            p.communicate()
            if p.returncode not in (0, 24):
                raise RuntimeError(f"parallel rsync exited {p.returncode}")
        wall = time.perf_counter() - t0
        for i in range(4):
            self.daemon.remove(f"seq-{r}-{i}")
            self.daemon.remove(f"par-{r}-{i}")
        self.record(
            "parallel",
            "rsync",
            {"seq_wall": seq, "par_wall": wall, "seq_mib_s": total / MiB / seq, "par_mib_s": total / MiB / wall, "speedup": seq / wall},
        )
        log(f"rsync 4 sources: one at a time {seq:.1f}s, together {wall:.1f}s (x{seq / wall:.2f})")

    # ---- report

    def report(self):
        R = self.results

        def stats(case, tool, key):
            v = [x for x in R.get(case, {}).get(tool, {}).get(key, []) if x is not None]
            if not v:
                return None
            return {"min": min(v), "median": statistics.median(v), "max": max(v), "n": len(v)}

        def med(case, tool, key):
            s = stats(case, tool, key)
            return None if s is None else s["median"]

        rows = []  # (case, what, p2c stats, rsync stats, ratio, target, met, unit)
        summary = {}

        def ratio_row(label, case, key="wall", target=None):
            p, q = stats(case, "p2c", key), stats(case, "rsync", key)
            if not p or not q:
                return
            ratio = p["median"] / q["median"] if q["median"] else None
            met = None if target is None or ratio is None else ratio <= target
            ps = med(case, "p2c", "pass_seconds")
            pass_ratio = ps / q["median"] if ps is not None and q["median"] else None
            rows.append((label, p, q, ratio, target, met, pass_ratio))
            summary[case] = {
                "p2c_s": p,
                "rsync_s": q,
                "ratio": ratio,
                "pass_ratio": pass_ratio,
                "target": target,
                "met": met,
            }

        ratio_row("1 first full copy (wall)", "first_copy", target=TARGETS["first_copy"])
        ratio_row("2 second pass, nothing changed", "second_pass", target=TARGETS["second_pass"])
        ratio_row("3 16 MiB changed in a big file", "bigfile_delta", target=TARGETS["bigfile_delta"])
        ratio_row("4 second server (B, wall)", "second_server")
        ratio_row("7 pass after 1% of files changed", "cutover")

        lines = []
        fmt = lambda s: "-" if not s else f"{s['min']:.2f}/{s['median']:.2f}/{s['max']:.2f}"
        lines.append(f"p2c vs rsync -aHAX --numeric-ids (daemon on loopback); page cache: {'cold' if self.a.cold else 'warm'}; runs: {self.a.runs}")
        ti = self.tree_info
        lines.append(
            f"tree: {self.a.tree} as {os.path.relpath(self.src, self.work)} ({ti['files']} files, {ti['entries']} entries, "
            f"{ti['bytes'] / GiB:.2f} GiB in distinct inodes, {ti['apparent_bytes'] / GiB:.2f} GiB counting hard links per path)"
        )
        lines.append(f"load average (1/5/15 min) at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
        lines.append("")
        lines.append(
            f"{'case':<36} {'p2c s min/med/max':>22} {'rsync s min/med/max':>22} {'ratio':>7} {'target':>7}  {'met':<4} {'pass ratio':>10}"
        )
        for label, p, q, ratio, target, met, pass_ratio in rows:
            lines.append(
                f"{label:<36} {fmt(p):>22} {fmt(q):>22} {ratio:>7.3f} {('<= ' + str(target)) if target else '':>7}  "
                f"{'' if met is None else ('yes' if met else 'NO'):<4} {_f(pass_ratio, '.3f'):>10}"
            )
        lines.append("(ratio: medians of the p2c command's wall clock / rsync's; pass ratio: p2c's pass time from the summary / rsync)")
        lines.append("")
        # pass time (engine only) and wire bytes
        lines.append(f"{'case':<36} {'p2c pass s':>11} {'p2c wire':>12} {'p2c tcp':>12} {'rsync sent':>12} {'agent cpu':>10} {'ctl cpu':>9}")
        for case, label in [
            ("first_copy", "1 first full copy"),
            ("second_pass", "2 second pass"),
            ("bigfile_first", "3a big file, first copy"),
            ("bigfile_delta", "3b 16 MiB changed"),
            ("second_server", "4 second server (B)"),
            ("cutover", "7 cutover (final pass+finalise)"),
        ]:
            if case not in R:
                continue
            lines.append(
                f"{label:<36} {_f(med(case, 'p2c', 'pass_seconds'), '.2f'):>11} {_b(med(case, 'p2c', 'wire_bytes')):>12} "
                f"{_b(med(case, 'p2c', 'tcp_bytes')):>12} {_b(med(case, 'rsync', 'wire_bytes')):>12} "
                f"{_f(med(case, 'p2c', 'agent_cpu'), '.1f'):>10} {_f(med(case, 'p2c', 'controller_cpu'), '.1f'):>9}"
            )
        lines.append("")
        lines.append("CPU seconds by thread during the p2c step (last run; of it in the kernel; tokio-rt-worker = async workers):")
        for case, label in [("first_copy", "1"), ("second_pass", "2"), ("bigfile_delta", "3b"), ("second_server", "4"), ("cutover", "7")]:
            th = R.get(case, {}).get("p2c", {}).get("threads_cpu")
            if th:
                top = ", ".join(f"{k} {v['cpu']:.1f} (sys {v['sys']:.1f})" for k, v in list(th[-1].items())[:6])
                lines.append(f"  {label:<3} {top}")
        lines.append("")
        if len(R.get("bigfile_delta", {})) == 2:
            w = med("bigfile_delta", "p2c", "wire_bytes")
            t = med("bigfile_delta", "p2c", "tcp_bytes")
            rw = med("bigfile_delta", "rsync", "wire_bytes")
            ch = self.a.change_size
            met = w / ch <= TARGETS["bigfile_wire_vs_change"]
            lines.append(
                f"3 wire / change ({ch / MiB:.0f} MiB in {self.a.big_size / GiB:.2f} GiB): p2c {w / ch:.3f} (tcp {t / ch:.3f}), rsync {rw / ch:.3f}; target <= 1.2: {'yes' if met else 'NO'}"
            )
            summary["bigfile_wire"] = {"p2c_wire_over_change": w / ch, "p2c_tcp_over_change": t / ch, "rsync_over_change": rw / ch, "target": 1.2, "met": met}
        if len(R.get("second_server", {})) == 2:
            w = med("second_server", "p2c", "wire_bytes")
            t = med("second_server", "p2c", "tcp_bytes")
            size = self.second_info["bytes"]
            rw = med("second_server", "rsync", "wire_bytes")
            met = w / size <= TARGETS["second_server_wire_vs_size"]
            lines.append(
                f"4 second server wire / its size ({size / GiB:.2f} GiB, {self.second_info['changed_files']} changed + {self.second_info['added_files']} new files): "
                f"p2c {w / size:.3f} (tcp {t / size:.3f}), rsync into an empty dir {rw / size:.3f}; target <= 0.15: {'yes' if met else 'NO'}"
            )
            summary["second_server_wire"] = {"p2c_wire_over_size": w / size, "p2c_tcp_over_size": t / size, "rsync_over_size": rw / size, "target": 0.15, "met": met}
        if "first_copy" in R:
            s = stats("first_copy", "p2c", "agent_hwm_mib")
            if s:
                met = s["max"] <= TARGETS["agent_peak_mib"]
                lines.append(f"5 agent peak memory (VmHWM) in the first copy: min/med/max {s['min']:.1f}/{s['median']:.1f}/{s['max']:.1f} MiB; target <= 64 MiB: {'yes' if met else 'NO'}")
                summary["agent_peak_mib"] = {**s, "target": 64, "met": met}
            c = stats("controller_mem", "p2c", "controller_hwm_mib")
            if c:
                lines.append(f"  (controller peak memory over cases 1/2/7/4: median {c['median']:.1f} MiB)")
        if len(R.get("parallel", {})) == 2:
            ps, rs = R["parallel"]["p2c"], R["parallel"]["rsync"]
            total = sum(self.subtree_sizes)
            lines.append(
                f"6 four sources ({total / GiB:.2f} GiB in 4 subtrees), median MiB/s together vs one at a time: p2c {statistics.median(ps['par_mib_s']):.1f} vs "
                f"{statistics.median(ps['seq_mib_s']):.1f} (per-run speedup median x{statistics.median(ps['speedup']):.2f}); "
                f"rsync {statistics.median(rs['par_mib_s']):.1f} vs {statistics.median(rs['seq_mib_s']):.1f} (x{statistics.median(rs['speedup']):.2f}); "
                f"p2c/rsync time with 4 at once {statistics.median(ps['par_wall']) / statistics.median(rs['par_wall']):.3f}"
            )
            summary["parallel"] = {
                "p2c_par_mib_s": statistics.median(ps["par_mib_s"]),
                "p2c_seq_mib_s": statistics.median(ps["seq_mib_s"]),
                "p2c_speedup": statistics.median(ps["speedup"]),
                "rsync_par_mib_s": statistics.median(rs["par_mib_s"]),
                "rsync_seq_mib_s": statistics.median(rs["seq_mib_s"]),
                "rsync_speedup": statistics.median(rs["speedup"]),
            }
        if R.get("cutover", {}).get("p2c"):
            s = stats("cutover", "p2c", "downtime_seconds")
            met = s["median"] <= TARGETS["cutover_downtime_s"]
            fp = med("cutover", "p2c", "pass_seconds")
            lines.append(
                f"7 cutover downtime with {self.a.cutover_change}% of files changed: min/med/max {s['min']:.2f}/{s['median']:.2f}/{s['max']:.2f} s "
                f"(final pass {fp:.2f}s, the rest is finalise: guest rewrite, verify, sync, quota); target <= 5 s: {'yes' if met else 'NO'}"
            )
            summary["cutover_downtime"] = {**s, "final_pass_s": fp, "target": 5.0, "met": met}
        for e in self.errors:
            lines.append(f"ERROR in run {e['run']} ({e['group']}): {e['error']}")
        text = "\n".join(lines)
        return text, summary


def _f(v, spec):
    return "-" if v is None else format(v, spec)


def _b(v):
    if v is None:
        return "-"
    for unit, div in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if v >= div:
            return f"{v / div:.1f} {unit}"
    return f"{v:.0f} B"


def remove_tree(p):
    """rm -rf, faster than shutil on big trees, and never into a file system still mounted."""
    subprocess.run(["rm", "-rf", "--one-file-system", "--", str(p)], check=False)


def parse_size(s):
    m = re.fullmatch(r"(\d+)([KMG]?)i?B?", s.strip(), re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {s!r} (e.g. 16M, 2G)")
    return int(m.group(1)) * {"": 1, "K": 1024, "M": MiB, "G": GiB}[m.group(2).upper()]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", help="the OS tree to copy (default /usr; /usr/share with --quick)")
    ap.add_argument("--quick", action="store_true", help="CI-sized: /usr/share, a 256 MiB big file, 1 run")
    ap.add_argument("--runs", type=int, help="repetitions of each case (default 3; 1 with --quick)")
    ap.add_argument("--workdir", help="scratch directory, on a disk file system (default: a new dir under /var/tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory and the controllers' dirs")
    ap.add_argument("--bin-dir", help="where p2c, p2c-agent, p2c-controller are (default $CARGO_TARGET_DIR/release or target/release)")
    ap.add_argument(
        "--dest-fs",
        choices=["loop", "workdir"],
        default="loop",
        help="where both tools write: a fresh ext4 loop file system per run (default) or the workdir's own",
    )
    ap.add_argument("--cold", action="store_true", help="drop the page cache before every timed step (default: warm)")
    ap.add_argument("--cases", default="1,2,3,4,5,6,7", help="comma-separated case numbers to run")
    ap.add_argument("--big-size", type=parse_size, help="size of the big file of case 3 (default 2G; 256M with --quick)")
    ap.add_argument("--change-size", type=parse_size, default=16 * MiB, help="bytes changed in the big file (16M)")
    ap.add_argument("--second-server-change", type=float, default=5.0, help="percent of files changed/added in B (5)")
    ap.add_argument("--cutover-change", type=float, default=1.0, help="percent of files changed before the cutover (1)")
    ap.add_argument("--parallel-share", type=int, default=8, help="each of the 4 parallel sources is at most 1/N of the tree (8)")
    ap.add_argument("--json-out", help="where to write the JSON results (default: WORKDIR/../p2c-bench-<time>.json)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("p2c_bench: run as root (the receivers write owners, devices and xattrs)")
    a.tree = a.tree or ("/usr/share" if a.quick else "/usr")
    a.runs = a.runs or (1 if a.quick else 3)
    a.big_size = a.big_size or (256 * MiB if a.quick else 2 * GiB)
    a.cases = {int(x) for x in a.cases.split(",") if x.strip()}
    repo = Path(__file__).resolve().parent.parent
    a.bin_dir = a.bin_dir or str(Path(os.environ.get("CARGO_TARGET_DIR", repo / "target")) / "release")
    for b in ("p2c", "p2c-agent", "p2c-controller"):
        if not (Path(a.bin_dir) / b).is_file():
            sys.exit(f"p2c_bench: {a.bin_dir}/{b} is missing; build with `cargo build --release --bins` or pass --bin-dir")
    for tool in ("rsync", "ss", "cp", "mkfs.ext4", "mount"):
        if not shutil.which(tool):
            sys.exit(f"p2c_bench: {tool} is not installed (scripts/setup-deps.sh installs rsync; ss is in iproute2)")
    made_workdir = a.workdir is None
    a.workdir = a.workdir or tempfile.mkdtemp(prefix="p2c-bench-", dir="/var/tmp")
    Path(a.workdir).mkdir(parents=True, exist_ok=True)
    out_json = Path(a.json_out or Path(a.workdir).parent / f"p2c-bench-{time.strftime('%Y%m%d-%H%M%S')}.json")

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    # SIGINT too: a shell without job control starts background jobs with SIGINT ignored,
    # and Python then keeps it ignored
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    b = Bench(a)
    started = time.time()
    load_start = os.getloadavg()
    code = 0
    try:
        b.setup()

        def document(summary):
            return {
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "duration_s": time.time() - started,
            "machine": {
                "cpus": os.cpu_count(),
                "kernel": os.uname().release,
                "rsync": run(["rsync", "--version"]).stdout.splitlines()[0],
                "loadavg_start": load_start,
                "loadavg_now": os.getloadavg(),
            },
            "options": {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(a).items()},
            "page_cache": "cold" if a.cold else "warm",
            "tree": b.tree_info,
            "second_server": getattr(b, "second_info", None),
            "parallel_subtrees": [os.path.relpath(p, b.src) for p in getattr(b, "subtrees", [])],
            "summary": summary,
            "runs": b.results,
            "errors": b.errors,
            }

        def checkpoint():
            out_json.write_text(json.dumps(document({"partial": True}), indent=2))

        b.run_all(checkpoint)
        text, summary = b.report()
        print(text)
        out_json.write_text(json.dumps(document(summary), indent=2))
        print(f"\nJSON: {out_json}")
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}); cleaning up")
        code = 130
    except Exception as e:  # noqa: BLE001 - report and clean up
        log(f"failed: {e}")
        code = 1
    finally:
        # finish the cleanup even if Ctrl-C is pressed again
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        PROCS.stop_all()
        if hasattr(b, "destfs"):
            b.destfs.release(keep=a.keep)
        if not a.keep:
            log("removing the scratch data")
            if made_workdir:
                remove_tree(a.workdir)
            else:
                for n in ("src", "src-b", "src-big", "rsyncd", "dest"):
                    remove_tree(Path(a.workdir) / n)
                for p in Path(a.workdir).glob("p2c-*"):
                    remove_tree(p)
        else:
            log(f"kept {a.workdir}")
    sys.exit(code)


if __name__ == "__main__":
    main()
