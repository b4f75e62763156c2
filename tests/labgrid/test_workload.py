"""The coherence workload (`job=soak`) on a labgrid target: the kernel's exit status is the
verdict, as for `harness soak`; its one `# soak` summary line must be there (a run that ended
before the workload finished has none)."""


def test_workload_completes_cleanly(ktap_run):
    assert ktap_run["error"] is None, ktap_run["error"]
    with open(ktap_run["log"], errors="replace") as f:
        summaries = [l.strip() for l in f if l.startswith("# soak ")]
    assert len(summaries) == 1, f"expected one `# soak` summary line, found {summaries}"
    assert ktap_run["exit_code"] == 0, f"kernel exit {ktap_run['exit_code']}: {summaries[0]}"
