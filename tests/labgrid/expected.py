"""Rewrites expected-cases.txt from `harness parse --json` results (make labgrid-expected).

    python3 expected.py OUT.txt RESULTS.json...
"""

import json
import sys

HEADER = """\
# Every KTAP case the kernel has, as suite.case: tests/labgrid/test_ktap.py fails one that
# never reports (a crash, a hang, a test lost from the build). Regenerate after adding or
# renaming kernel tests: make labgrid-expected.
"""


def main(out, results):
    cases = {}
    for path in results:
        with open(path) as f:
            for run in json.load(f)["runs"]:
                for c in run["cases"]:
                    if c["status"] == "ERROR":
                        sys.exit(f"{path}: {c['suite']}.{c['name']} never reported: not a baseline")
                    cases[f"{c['suite']}.{c['name']}" if c["suite"] else c["name"]] = None
    if not cases:
        sys.exit("no cases in " + " ".join(results))
    with open(out, "w") as f:
        f.write(HEADER + "".join(f"{c}\n" for c in cases))
    print(f"{out}: {len(cases)} cases")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
