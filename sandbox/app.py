"""Guest app of the wasm executor, built into a component by build.sh (componentize-py).

componentize-py runs this module at build time and snapshots the initialised interpreter. The
guest has no stdlib on disk afterwards, so every module a solution may import must be imported
here (the list is preload.txt, shared with the process executor's forkserver).
"""

import builtins
import gc
import importlib
import os

import wit_world

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "preload.txt")) as _f:
    PRELOAD = [
        line.strip() for line in _f if line.strip() and not line.lstrip().startswith("#")
    ]
for _name in PRELOAD:
    importlib.import_module(_name)

# Details travel back to the host; cap them so a hostile message cannot bloat the reply.
DETAIL_CHARS = 1000

# What runs after the solution, bound before it: a solution that replaces `builtins.exec` (or
# `dict`, ...) must not turn its tests into passes.
_exec, _compile, _str, _type, _dict = exec, compile, str, type, dict
_MemoryError, _SystemExit, _BaseException = MemoryError, SystemExit, BaseException
_Passed, _Failed = wit_world.Verdict_Passed, wit_world.Verdict_Failed
_Memory, _Exited = wit_world.Verdict_Memory, wit_world.Verdict_Exited


def _describe(exc):
    try:
        message = _str(exc)
    except _BaseException:  # a hostile __str__
        message = "<unprintable>"
    text = _type(exc).__name__ + (": " + message if message else "")
    return text[:DETAIL_CHARS]


def _run(source, namespace, filename):
    try:
        _exec(_compile(source, filename, "exec"), namespace)
    except _MemoryError as exc:
        return _Memory(_describe(exc))
    except _SystemExit as exc:
        return _Exited(_describe(exc))
    except _BaseException as exc:
        return _Failed(_describe(exc))
    return _Passed()


def _warm_up():
    # Run each code path once at build time, so that what CPython initialises lazily (compiler
    # and exception machinery, caches) is in the snapshot instead of redone in every sample.
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    _run("import math\ndef f(a, b):\n    return math.gcd(a, b) + len([x for x in range(a)])", namespace, "<solution>")
    for test in ("assert f(4, 6) == 6", "assert f(1, 1) == 3, 'no'", "f(", "raise SystemExit(0)", "[0] * -1"):
        _run(test, dict(namespace), "<test>")


class WitWorld(wit_world.WitWorld):
    # One instance per sample: the solution's namespace lives in the instance's memory.
    namespace = None

    def exec_solution(self, code):
        WitWorld.namespace = {"__name__": "__main__", "__builtins__": builtins}
        return _run(code, WitWorld.namespace, "<solution>")

    def run_test(self, test):
        if WitWorld.namespace is None:
            return _Failed("RuntimeError: solution was not executed")
        return _run(test, _dict(WitWorld.namespace), "<test>")

    def probe_imports(self, names):
        out = []
        for name in names:
            try:
                importlib.import_module(name)
                out.append(wit_world.Verdict_Passed())
            except BaseException as exc:
                out.append(wit_world.Verdict_Failed(_describe(exc)))
        return out


_warm_up()
# Everything alive now is in the snapshot. Freezing it keeps the collector from walking (and so
# dirtying) the whole snapshot heap in every sample: fewer pages to reset per instance.
gc.collect()
gc.freeze()
