"""Shootdown's in-kernel KTAP tests, one pytest result per case (see conftest.py)."""

import json

import pytest


def _details(case):
    lines = [f"status {case['status']}"]
    if case.get("reason"):
        lines.append(f"reason: {case['reason']}")
    lines += case.get("diagnostics") or []
    return "\n".join(lines)


def test_ktap(ktap_case, ktap_run):
    case = ktap_run["cases"].get(ktap_case)
    if case is None:
        why = "; ".join(dict.fromkeys(ktap_run.get("why_missing", {}).get(ktap_case, [])))
        pytest.fail(f"{ktap_case} never reported a result (listed in expected-cases.txt)"
                    f"{': ' + why if why else ''}; boot: {ktap_run['error'] or 'completed'}; "
                    f"console: {ktap_run['log']}", pytrace=False)
    status = case["status"]
    if status == "PASS":
        return
    if status == "SKIP":
        pytest.skip(case.get("reason") or "skipped by the kernel")
    if status == "XFAIL":
        pytest.xfail(case.get("reason") or "expected failure")
    pytest.fail(f"{ktap_case}: {_details(case)}", pytrace=False)


def test_run_completed(ktap_run, record_testsuite_property):
    """The kernel reached its exit line, its KTAP parsed cleanly, and its exit status agrees with
    the cases (a failure no case owns would otherwise pass unnoticed)."""
    record_testsuite_property("kernel_exit", str(ktap_run["exit_code"]))
    if ktap_run.get("pushed"):  # SDCL: attempts, seconds on the wire, where the kernel went
        record_testsuite_property("sdcl_push", json.dumps(ktap_run["pushed"]))
    assert ktap_run["error"] is None, ktap_run["error"]
    counts = ktap_run["counts"]
    assert counts.get("format_errors") == 0, f"KTAP format errors: {counts}"
    assert ktap_run["cases"], "the run reported no KTAP case at all"
    failed = sorted(k for k, c in ktap_run["cases"].items() if c["status"] in ("FAIL", "ERROR"))
    failed += ktap_run["missing"] + [u["reason"] for u in ktap_run["unreported"]]
    assert (ktap_run["exit_code"] == 0) == (not failed), (
        f"kernel exit {ktap_run['exit_code']} but failing cases {failed}")
