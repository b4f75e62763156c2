"""pytest + labgrid: one boot of Shootdown, one pytest result per KTAP case.

The kernel is booted once, while tests are collected (the cases are only known from its
console): ShootdownStrategy goes to `tests_done`, the console is saved, and `harness parse
--json` turns it into per-case results. The case list is the union of the cases the run
reported and those in expected-cases.txt, so a case that never ran fails instead of vanishing.

Options (besides labgrid's --lg-env / --lg-coordinator):
  --shootdown-name NAME      run name: the log is OUT/NAME.log, results OUT/NAME.json
  --shootdown-out DIR        default build/labgrid
  --shootdown-harness PATH   default target/debug/harness
  --shootdown-expected FILE  default tests/labgrid/expected-cases.txt ('' for none)
"""

import json
import os
import subprocess
import traceback

import pytest

from labgrid.pytestplugin.hooks import LABGRID_ENV_KEY

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
RUN_KEY = pytest.StashKey[dict]()


def pytest_addoption(parser):
    g = parser.getgroup("shootdown")
    g.addoption("--shootdown-name", default=None)
    g.addoption("--shootdown-out", default=os.path.join(ROOT, "build", "labgrid"))
    g.addoption("--shootdown-harness", default=os.path.join(ROOT, "target", "debug", "harness"))
    g.addoption("--shootdown-expected", default=os.path.join(os.path.dirname(__file__),
                                                             "expected-cases.txt"))


def expected_cases(path):
    if not path:
        return []
    with open(path) as f:
        return [l.strip() for l in f if l.strip() and not l.startswith("#")]


def root_cause(e):
    # labgrid wraps a failed transition in StrategyError("... broken state") per nesting level.
    while e.__cause__ is not None:
        e = e.__cause__
    return e


def boot_and_parse(config) -> dict:
    """Runs the kernel once; never raises: what went wrong is in run["error"]."""
    run = {"error": None, "cases": {}, "exit_code": None, "counts": {}, "log": None,
           "unreported": []}
    env = config.stash.get(LABGRID_ENV_KEY, None)
    if env is None:
        run["error"] = "no labgrid environment: pass --lg-env FILE"
        return run
    name = config.option.shootdown_name or os.path.splitext(os.path.basename(env.config_file))[0]
    out = config.option.shootdown_out
    os.makedirs(out, exist_ok=True)
    run["log"] = log = os.path.join(out, f"{name}.log")
    strategy = None
    try:
        strategy = env.get_target("main").get_driver("Strategy")
        strategy.transition("tests_done")
        run["exit_code"] = strategy.exit_code
        run["pushed"] = strategy.pushed
    except Exception as e:  # the boot failed: the log up to here still says which cases ran
        cause = root_cause(e)
        run["error"] = f"{type(cause).__name__}: {cause}"
        traceback.print_exc()
    finally:
        if strategy is not None:
            with open(log, "wb") as f:
                f.write(strategy.log)
            try:
                strategy.transition("off")
            except Exception as e:  # pylint: disable=broad-except
                cause = root_cause(e)
                run["error"] = (run["error"] or "") + f"\nswitching off: {type(cause).__name__}: {cause}"
                traceback.print_exc()
    if strategy is None:
        return run
    results = os.path.join(out, f"{name}.json")
    if os.path.exists(results):
        os.unlink(results)
    # The harness exits 1 when a case fails: the JSON, not the status, carries the results.
    p = subprocess.run([config.option.shootdown_harness, "parse", log, "--json", results,
                        "--name", name], capture_output=True, text=True)
    if not os.path.exists(results):
        run["error"] = (run["error"] or "") + f"\nharness parse wrote no JSON: {p.stdout}{p.stderr}"
        return run
    with open(results) as f:
        data = json.load(f)
    (r,) = data["runs"]
    run["counts"] = r["counts"]
    run["passed"] = r["passed"]
    run["unreported"] = []
    for c in r["cases"]:
        if c["status"] == "ERROR" and c["name"].startswith("#"):
            # The harness's stand-in for a case or suite the plan announced that never reported
            # (KTAP names a case only in its result line): its name is only a number.
            run["unreported"].append(c)
            continue
        key = f"{c['suite']}.{c['name']}" if c["suite"] else c["name"]
        if key in run["cases"]:
            run["error"] = (run["error"] or "") + f"\ncase {key} reported twice"
        run["cases"][key] = c
    return run


def shootdown_run(config) -> dict:
    if RUN_KEY not in config.stash:
        run = boot_and_parse(config)
        attribute_unreported(run, expected_cases(config.option.shootdown_expected))
        config.stash[RUN_KEY] = run
    return config.stash[RUN_KEY]


def attribute_unreported(run, expected):
    """A number-only stand-in is the same failure as a listed case missing from its suite (or,
    for a whole suite, a listed case of a suite that never started): report it under the listed
    names, and under its own only when no listed case explains it."""
    run["missing"] = [e for e in expected if e not in run["cases"]]
    run["why_missing"] = {}
    started = {c["suite"] for c in run["cases"].values()} | {u["suite"] for u in run["unreported"]}
    for u in run["unreported"]:
        if u["suite"]:
            owners = [m for m in run["missing"] if m.startswith(u["suite"] + ".")]
        else:
            owners = [m for m in run["missing"] if m.rsplit(".", 1)[0] not in started]
        for m in owners:
            run["why_missing"].setdefault(m, []).append(u["reason"])
        if not owners:
            key = f"{u['suite']}.{u['name']}" if u["suite"] else u["name"]
            run["cases"][key] = u


def pytest_generate_tests(metafunc):
    if "ktap_case" not in metafunc.fixturenames:
        return
    run = shootdown_run(metafunc.config)
    expected = expected_cases(metafunc.config.option.shootdown_expected)
    ids = list(dict.fromkeys(expected + list(run["cases"])))
    metafunc.parametrize("ktap_case", ids, ids=ids)


@pytest.fixture(scope="session")
def ktap_run(request):
    return shootdown_run(request.config)
