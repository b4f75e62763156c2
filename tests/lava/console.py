"""The board's console out of a LAVA job log, for `harness parse` (the job's own result is not
a verdict: docs/board-farms.md).

    lavacli jobs logs --raw JOB_ID > job.yaml
    python3 tests/lava/console.py job.yaml > console.log
    target/debug/harness parse console.log --json results.json --junit results.xml

A raw LAVA log is a YAML list of {dt, lvl, msg}; the board's lines are those at level `target`.
"""

import sys

import yaml


def console(entries) -> str:
    lines = []
    for e in entries or []:
        if isinstance(e, dict) and e.get("lvl") == "target":
            msg = e.get("msg")
            lines.append(msg if isinstance(msg, str) else str(msg))
    return "".join(l + "\n" for l in lines)


def main(argv):
    if len(argv) != 1:
        sys.exit(__doc__)
    with open(argv[0]) as f:
        entries = yaml.safe_load(f)
    text = console(entries)
    if not text:
        sys.exit(f"{argv[0]}: no target lines (is it `lavacli jobs logs --raw` output?)")
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
