"""Checks a pytest JUnit file: exactly the named test cases failed (or errored), others passed
or were skipped, and something passed. Proves a run can fail, and fails where it should.

    python3 junit_expect.py FILE.xml --failed 'test_ktap[ktest.selftest_fail]' [--failed ...]
"""

import argparse
import sys
import xml.etree.ElementTree as ET


def main(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("junit")
    ap.add_argument("--failed", action="append", default=[])
    a = ap.parse_args(argv)
    failed, passed = set(), 0
    for case in ET.parse(a.junit).getroot().iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed.add(case.get("name"))
        elif case.find("skipped") is None:
            passed += 1
    want = set(a.failed)
    ok = failed == want and passed > 0
    print(f"{a.junit}: {passed} passed, failed {sorted(failed)}; expected failed {sorted(want)}: "
          f"{'as expected' if ok else 'NOT as expected'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
