"""Forkserver of the process executor (src/sandbox/process.rs).

Run by the host as `python3 -I -S -B -c <this file> <config json>`, as root. At start-up it
  1. unshares a mount, a network and a PID namespace (created once for the whole worker tree:
     per-sample namespaces halve throughput, see shared/docs/sandbox-notes.md);
  2. forks the server proper, which is PID 1 of the new PID namespace: a sample's processes,
     `setsid()` daemons included, can then all be killed with `kill(-1)`, and none of them can
     signal the server (init of its namespace, and another uid);
  3. mounts a size-capped tmpfs as the samples' root, with the stdlib bound read-only at its own
     path (lazy imports keep working) and /dev/null; host files are not reachable from there;
  4. chroots there itself, and sets what every sample inherits: the minimal environment, the
     rlimits that cannot hinder the server (file size, processes, core) and no_new_privs;
  5. pre-imports the modules of preload.txt above its "process: lazy" line (the host passes the
     list) and runs a warm-up sample.
Then, per request (one JSON line on stdin), it forks one child per attempt: the child applies the
CPU, address-space and open-files rlimits, drops to an unprivileged uid, runs the solution and
then each test, and reports each verdict on a private pipe (its stdout/stderr are /dev/null, so
printing cannot forge a result). The server enforces the per-test deadline itself; a test that
hangs, crashes or exits is charged alone and a fresh child re-runs the solution and continues
with the next test. The reply is one JSON line on stdout.

A child's cost is mostly the pages it touches (each first write to one of the server's pages is
a copy-on-write fault), so it does as little as possible: everything that is the same for every
sample is done once, above, by the server.
"""

import builtins
import ctypes
import gc
import json
import os
import resource
import select
import shutil
import signal
import stat
import sys
import sysconfig
import time

CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38

# The samples' writable directory (inside the server's chroot).
TMP = "/tmp"
# Result-channel fd inside a sample.
RESULT_FD = 3
# Verdict details travel back to the host: keep them short.
DETAIL_CHARS = 1000
# A result line longer than this is a corrupt channel, not a verdict.
MAX_LINE = 64 * 1024

LIBC = ctypes.CDLL(None, use_errno=True)


def _check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, "%s: %s" % (what, os.strerror(err)))


def _mount(source, target, fstype, flags, data):
    _check(
        LIBC.mount(
            None if source is None else source.encode(),
            target.encode(),
            None if fstype is None else fstype.encode(),
            ctypes.c_ulong(flags),
            None if data is None else data.encode(),
        ),
        "mount %s" % target,
    )


def _send(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _setup_root(config):
    root = config["root"]
    _mount(None, "/", None, MS_REC | MS_PRIVATE, None)
    _mount(
        "tmpfs",
        root,
        "tmpfs",
        MS_NOSUID | MS_NODEV | MS_NOEXEC,
        "size=%d,nr_inodes=4096,mode=755" % config["tmpfs_bytes"],
    )
    # The stdlib at its own path, so that sys.path stays valid inside the chroot.
    paths = {sysconfig.get_path("stdlib"), sysconfig.get_path("platstdlib")}
    dynload = os.path.dirname(getattr(sys.modules.get("_json"), "__file__", "") or "")
    if dynload:
        paths.add(dynload)
    for path in sorted(p for p in paths if p and os.path.isdir(p)):
        target = root + path
        os.makedirs(target, exist_ok=True)
        _mount(path, target, None, MS_BIND | MS_REC, None)
        _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, None)
    os.makedirs(root + "/dev", exist_ok=True)
    open(root + "/dev/null", "w").close()
    _mount("/dev/null", root + "/dev/null", None, MS_BIND, None)


def _confine_server(config):
    """What every sample inherits, set once (see the module docstring, step 4)."""
    os.chroot(config["root"])
    os.chdir("/")
    os.environ.clear()
    os.environ.update({"HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8"})
    # The server is root, which RLIMIT_NPROC does not bind; the samples' uids it does. (It
    # writes no files; RLIMIT_NOFILE, which could starve it, is set in each child.)
    for which, value in (
        (resource.RLIMIT_FSIZE, config["file_size_bytes"]),
        (resource.RLIMIT_NPROC, config["processes"]),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(which, (value, value))
    _check(LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")


def _preload(names):
    for name in names:
        __import__(name)


def _warm_up():
    # Run each path of a sample once in the server, so that what CPython initialises lazily
    # (the compiler's and the AST's state, exception and traceback machinery) is shared by
    # every child instead of rebuilt, page by page, in each one.
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    _run("import math\ndef f(a, b):\n    return math.gcd(a, b) + len([x for x in range(a)])", namespace, "<solution>")
    for test in ("assert f(4, 6) == 6", "assert f(1, 1) == 3, 'no'", "f(", "raise SystemExit(0)", "[0] * -1"):
        _run(test, dict(namespace), "<test>")


# ---------------------------------------------------------------------------------------------
# Inside a sample (after fork): nothing here may trust the program it runs.


# What the child calls after the program has run, bound before it runs: a program that replaces
# `builtins.exec` (or `len`, `dict`, ...) must not turn the remaining tests into passes.
_quote = json.encoder.encode_basestring_ascii
_write = os.write
_getpid = os.getpid
_exit = os._exit
_exec, _compile, _str, _type, _dict, _len, _range = exec, compile, str, type, dict, len, range
_MemoryError, _SystemExit, _BaseException = MemoryError, SystemExit, BaseException


def _describe(exc):
    try:
        message = _str(exc)
    except _BaseException:
        message = "<unprintable>"
    text = _type(exc).__name__ + (": " + message if message else "")
    return text[:DETAIL_CHARS]


def _report(index, kind, detail):
    # Formatted by hand: the JSON encoder's Python code calls builtins the program may have
    # replaced (and its first use copies pages in each child).
    data = b'[%d, "%s", %s]\n' % (index, kind.encode(), _quote(detail).encode())
    while data:
        data = data[_write(RESULT_FD, data):]


def _run(source, namespace, filename):
    try:
        _exec(_compile(source, filename, "exec"), namespace)
    except _MemoryError as exc:
        return "memory", _describe(exc)
    except _SystemExit as exc:
        return "exited", _describe(exc)
    except _BaseException as exc:
        return "failed", _describe(exc)
    return "passed", ""


def _child(config, req, start, write_fd, devnull, stdio):
    # Inherited from the server: the chroot, the environment, no_new_privs, the file-size, process
    # and core rlimits. `random` is imported fresh (or, if preloaded, reseeds itself after fork).
    os.setsid()
    # stdio first: devnull may itself be fd 3, which the result pipe takes over next.
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.dup2(write_fd, RESULT_FD)
    os.closerange(RESULT_FD + 1, 1 << 16)
    os.chdir("/tmp")
    cpu = int(req["timeout"] * (len(req["tests"]) - start + 1)) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (req["memory_bytes"], req["memory_bytes"]))
    resource.setrlimit(resource.RLIMIT_NOFILE, (config["open_files"], config["open_files"]))
    uid = config["uid"]
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    # Fresh, empty text streams on fds 1 and 2 (now /dev/null), made by the server: whatever the
    # server's own streams hold is not ours to flush.
    sys.stdout, sys.stderr = stdio

    me = _getpid()
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    kind, detail = _run(req["code"], namespace, "<solution>")
    # A process the program forked returns into this loop too: it must not report.
    if _getpid() != me:
        _exit(0)
    _report(-1, kind, detail)
    if kind == "passed":
        tests = req["tests"]
        for index in _range(start, _len(tests)):
            kind, detail = _run(tests[index], _dict(namespace), "<test>")
            if _getpid() != me:
                _exit(0)
            _report(index, kind, detail)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        _exit(0)


# ---------------------------------------------------------------------------------------------
# The server (PID 1 of its namespace).


def _outcome(kind, detail):
    if kind == "passed":
        return {"outcome": "passed"}
    if kind == "failed":
        return {"outcome": "failed", "detail": detail}
    if kind == "memory":
        return {"outcome": "memory"}
    if kind == "exited":
        return {"outcome": "crashed", "detail": "exited: " + detail}
    if kind == "timeout":
        return {"outcome": "timeout"}
    return {"outcome": "crashed", "detail": detail}


def _kill_all():
    """Kill every other process of this PID namespace and reap them all (we are their init)."""
    while True:
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            return
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                break


def _reap(pid):
    """The child's wait status, or None while it is still running."""
    try:
        got, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return status if got else None


def _exit_verdict(status):
    if status is None:
        return "crashed", "closed the result channel"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU:
            return "timeout", ""
        return "crashed", "killed by signal %d (%s)" % (sig, signal.Signals(sig).name)
    code = os.waitstatus_to_exitcode(status)
    return "crashed", "exited with status %d before reporting" % code


def _fresh_tmp(uid):
    """Makes /tmp an empty directory of the sample uid, unless it already is one (after every
    attempt: nothing a sample leaves there, nor its mode, reaches the next)."""
    try:
        st = os.lstat(TMP)
        clean = (
            stat.S_ISDIR(st.st_mode)
            and st.st_uid == uid
            and stat.S_IMODE(st.st_mode) == 0o700
            and not os.listdir(TMP)
        )
    except OSError:
        clean = False
    if not clean:
        shutil.rmtree(TMP, ignore_errors=True)
        if os.path.lexists(TMP):
            os.unlink(TMP)
        os.mkdir(TMP, 0o700)
        os.chown(TMP, uid, uid)


def _attempt(config, req, start, results, devnull, stdio):
    """Run the solution and tests[start:] in one child; returns the index to resume from."""
    tests = req["tests"]
    n = len(tests)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            _child(config, req, start, write_fd, devnull, stdio)
        finally:
            os._exit(125)
    os.close(write_fd)
    os.set_blocking(read_fd, False)
    pidfd = os.pidfd_open(pid)

    # expected: -1 while the solution runs, then the index of the running test.
    expected = -1
    buf = b""

    def fill(kind, detail, first):
        for j in range(first, n):
            results[j] = _outcome(kind, detail)

    def on_line(line):
        """Returns the resume index when the attempt is over, else None."""
        nonlocal expected
        try:
            index, kind, detail = json.loads(line)
            valid = index == expected and kind in ("passed", "failed", "memory", "exited")
        except (ValueError, TypeError):
            valid = False
        if not valid:
            target = start if expected == -1 else expected
            fill("crashed", "corrupt result channel", target)
            return n
        if index == -1:
            if kind != "passed":
                fill(kind, detail, start)
                return n
            expected = start
            return n if start >= n else None
        results[index] = _outcome(kind, detail)
        expected = index + 1
        return n if expected >= n else None

    def drain():
        nonlocal buf
        eof = False
        while True:
            try:
                chunk = os.read(read_fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                eof = True
                break
            buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            done = on_line(line)
            if done is not None:
                return done, eof
        if len(buf) > MAX_LINE:
            return on_line(b"x"), eof
        return None, eof

    try:
        deadline = time.monotonic() + req["timeout"]
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if expected == -1:
                    fill("timeout", "", start)
                    return n
                results[expected] = _outcome("timeout", "")
                return expected + 1
            ready, _, _ = select.select([read_fd, pidfd], [], [], remaining)
            before = expected
            done, eof = drain()
            if done is not None:
                return done
            if expected != before:
                deadline = time.monotonic() + req["timeout"]
            if not eof and pidfd not in ready:
                continue
            # The child died or closed its channel: charge the step that was running.
            kind, detail = _exit_verdict(_reap(pid))
            if expected == -1:
                fill(kind, detail, start)
                return n
            results[expected] = _outcome(kind, detail)
            return expected + 1
    finally:
        os.close(pidfd)
        os.close(read_fd)
        _kill_all()
        _fresh_tmp(config["uid"])


def _handle(config, req, devnull, stdio):
    n = len(req["tests"])
    results = [None] * n
    start = 0
    while start < n:
        start = _attempt(config, req, start, results, devnull, stdio)
    return results


def _serve(config):
    LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    _setup_root(config)
    _confine_server(config)
    devnull = os.open("/dev/null", os.O_RDWR)
    stdio = (open(1, "w", closefd=False), open(2, "w", closefd=False))
    _fresh_tmp(config["uid"])
    _preload(config["preload"])
    _warm_up()
    # Objects that exist now are never collected: keeps the children's pages shared.
    gc.freeze()
    _send({"ready": True, "python": sys.version.split()[0]})
    stdin = sys.stdin.buffer
    while True:
        line = stdin.readline()
        if not line:
            return
        try:
            req = json.loads(line)
            results = _handle(config, req, devnull, stdio)
            _send({"outcomes": results})
        except Exception as exc:  # a host bug: report it, keep serving
            _send({"error": "%s: %s" % (type(exc).__name__, exc)})


def main():
    config = json.loads(sys.argv[1])
    try:
        _check(LIBC.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID), "unshare")
    except OSError as exc:
        _send({"error": "cannot create namespaces (needs root or CAP_SYS_ADMIN): %s" % exc})
        return 1
    pid = os.fork()
    if pid:
        # The outer process only waits: it holds no role but to be killable by the host.
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)
    try:
        _serve(config)
    except BaseException as exc:
        _send({"error": "forkserver: %s: %s" % (type(exc).__name__, exc)})
        os._exit(1)
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
