#!/usr/bin/env python3
"""Summarise a CubeCL kernel profile written by `coupled-grpo bench ... --kernel-profile FILE`.

CubeCL appends one table per device sync: the device time of every kernel name launched since
the previous sync. The bench syncs at the end of each phase, so the tables follow the phases in
order: `init`, then per step `forward`, `backward`, `optimizer` (train-step), `pass` (rollout)
or `update` (grpo-step), the warm-up step first. Prints one line per table, then the last step's
tables and the kernels of that whole step (the steady state) with their share.

    tools/kernel_profile.py FILE --bench train-step [--top 15] [--step-ms MS]
"""
import argparse
import re
import sys

PHASES = {
    "train-step": ["forward", "backward", "optimizer"],
    "rollout": ["pass"],
    "grpo-step": ["update"],
}
UNITS = {"ns": 1e-3, "µs": 1.0, "us": 1.0, "ms": 1e3, "s": 1e6}
DURATION = re.compile(r"^([0-9.]+)(ns|µs|us|ms|s)$")


def micros(text):
    """Rust's Debug form of a Duration (`1.5ms`, `12µs`, `2.1s`) in microseconds."""
    m = DURATION.match(text)
    if not m:
        raise ValueError(f"not a duration: {text!r}")
    return float(m.group(1)) * UNITS[m.group(2)]


def tables(lines):
    """The profile's tables in order, each a list of (name, microseconds, launches)."""
    out, rows = [], None
    for lineno, line in enumerate(lines, 1):
        line = line.rstrip("\n")
        if line.startswith("|⎺"):
            rows = []
            continue
        if rows is None or not line.startswith("| ") or not line.endswith(" |"):
            continue
        parts = line[2:-2].rsplit(" | ", 3)
        if len(parts) != 4:
            raise ValueError(f"line {lineno}: not a profile row: {line!r}")
        name, duration, count = parts[0].strip(), parts[1].strip(), parts[2].strip()
        if name == "Name" and duration == "Duration":
            continue
        if name == "Total":
            out.append(rows)
            rows = None
            continue
        try:
            rows.append((name, micros(duration), int(count)))
        except ValueError as exc:
            raise ValueError(f"line {lineno}: {exc}") from None
    return out


def labels(n, bench):
    """Phase labels for n tables, or None when n does not fit the bench's sync pattern."""
    cycle = PHASES[bench]
    if n < 1 or (n - 1) % len(cycle):
        return None
    return ["init"] + [f"step {i // len(cycle)} {cycle[i % len(cycle)]}" for i in range(n - 1)]


def totals(rows):
    """(microseconds, launches) of a table's rows."""
    return sum(us for _, us, _ in rows), sum(c for _, _, c in rows)


def show(title, rows, top):
    total, launches = totals(rows)
    print(f"== {title}: {total / 1e3:.2f} ms of kernels, {launches} launches, {len(rows)} kernel names")
    for name, us, count in sorted(rows, key=lambda r: -r[1])[:top]:
        share = 100.0 * us / total if total else 0.0
        print(f"  {us / 1e3:9.3f} ms {share:5.1f} % {count:6d}x  {name[:110]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("file")
    ap.add_argument("--bench", choices=sorted(PHASES), default="train-step")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--step-ms", type=float, default=None,
                    help="the unprofiled run's step (or pass) time, to set the kernels against")
    a = ap.parse_args()
    try:
        with open(a.file, encoding="utf-8", errors="replace") as f:
            found = tables(f)
    except (OSError, ValueError) as exc:
        print(f"{a.file}: {exc}")
        return 1
    if not found:
        print(f"{a.file}: no profile tables (was the run cut off, or not on a CubeCL backend?)")
        return 1
    names = labels(len(found), a.bench)
    if names is None:
        print(f"{a.file}: {len(found)} tables do not follow the {a.bench} phases; numbered instead")
        names = [f"sync {i}" for i in range(len(found))]
    for name, rows in zip(names, found):
        us, launches = totals(rows)
        print(f"{name}: {us / 1e3:.2f} ms, {launches} launches")
    per_step = len(PHASES[a.bench])
    if names[0] != "init" or len(found) < 1 + per_step:
        for name, rows in zip(names, found):
            show(name, rows, a.top)
        return 0
    last = found[-per_step:]
    for name, rows in zip(names[-per_step:], last):
        show(name, rows, a.top)
    merged = {}
    for rows in last:
        for kernel, us, count in rows:
            t, c = merged.get(kernel, (0.0, 0))
            merged[kernel] = (t + us, c + count)
    step = names[-1].rsplit(" ", 1)[0]
    whole = [(k, t, c) for k, (t, c) in merged.items()]
    show(f"{step}, all phases", whole, a.top)
    if a.step_ms:
        busy = totals(whole)[0] / 1e3
        print(f"kernels of one step: {busy:.1f} ms = {100 * busy / a.step_ms:.0f} % of the unprofiled "
              f"step ({a.step_ms:.1f} ms); the rest the device spends waiting (host work, launches, gaps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
