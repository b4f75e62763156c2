"""The generated LAVA jobs: valid for LAVA's own job schema (lava_common, from Debian's
lava-common; `make test-lava` puts it on PYTHONPATH), and saying what our kernel needs."""

import copy
import glob
import os
import re

import pytest
import yaml
from lava_common.schemas import extra_checks, validate

import jobs  # noqa: F401  (puts tests/labgrid on sys.path for profiles)

# A console as the kernel prints it (nested KTAP; diagnostics that must not count as tests).
CONSOLE = """\
Shootdown 0.1.0 (aarch64)
KTAP version 1
1..2
  KTAP version 1
  # Subtest: boot
  1..3
  ok 1 reached
  # took 483 ms
  not ok 2 dt_memory_matches_qemu
  ok 3 all_cpus_online # SKIP one CPU
not ok 1 boot
  # Subtest: smmu
  ok 1 invalidate_after_unmap_is_not_stale
ok 2 smmu
# shootdown: exit 1
"""


def load_all(folder):
    paths = sorted(glob.glob(os.path.join(folder, "*.yaml")))
    return {os.path.basename(p)[:-5]: yaml.safe_load(open(p)) for p in paths}


@pytest.fixture(scope="module")
def generated(request):
    found = load_all(request.config.option.jobs)
    assert found, f"no jobs in {request.config.option.jobs}: make lava-jobs"
    return found


def test_every_board_has_a_job(generated):
    import profiles
    assert set(generated) == {f"qemu-{b}" for b in profiles.names()} | {"bcm2711-rpi-4-b"}


def test_jobs_are_valid_for_lavas_schema(generated):
    for name, job in generated.items():
        validate(job, strict=True)
        extra_checks(job)


@pytest.mark.parametrize("breakage", ["boot_method", "monitor_name", "timeout"])
def test_the_schema_check_can_fail(generated, breakage):
    job = copy.deepcopy(generated["qemu-virt"])
    actions = {next(iter(a)): a[next(iter(a))] for a in job["actions"]}
    if breakage == "boot_method":
        actions["boot"]["method"] = "qemuu"
    elif breakage == "monitor_name":
        actions["test"]["monitors"][0]["name"] = "has spaces"
    else:
        actions["test"]["timeout"] = {"hours": 10}  # longer than the job
    with pytest.raises(Exception):
        validate(job, strict=True)
        extra_checks(job)


def test_kernel_start_message_and_device_types(generated):
    for name, job in generated.items():
        boot = next(a["boot"] for a in job["actions"] if "boot" in a)
        start = boot["parameters"]["kernel-start-message"]
        assert re.search(start, CONSOLE), name
        assert job["device_type"] == ("bcm2711-rpi-4-b" if name == "bcm2711-rpi-4-b" else "qemu")
        if job["device_type"] == "qemu":
            options = " ".join(job["context"]["extra_options"])
            assert "-semihosting" not in options and "-no-shutdown" in options, name
        else:
            assert boot["method"] == "u-boot"
            assert any(c.startswith("booti ") for c in boot["commands"])


def test_monitor_pattern_is_anchored_and_reads_every_result_line(generated):
    for name, job in generated.items():
        (monitor,) = next(a["test"] for a in job["actions"] if "test" in a)["monitors"]
        found = [(m["test_case_id"], monitor["fixupdict"][m["result"]])
                 for m in re.finditer(monitor["pattern"], CONSOLE)]
        assert found == [("reached", "pass"), ("dt_memory_matches_qemu", "fail"),
                         ("all_cpus_online", "pass"), ("boot", "fail"),
                         ("invalidate_after_unmap_is_not_stale", "pass"), ("smmu", "pass")], name
        assert monitor["start"] in CONSOLE and monitor["end"] in CONSOLE
        # Unanchored, "# took 483 ms" or a name's tail would be read as a result.
        assert not re.search(monitor["pattern"], "  # took 483 ms\n  xok 1 reached\n")


def test_qemu_jobs_follow_the_profiles(generated):
    import profiles
    for board in profiles.names():
        p = profiles.load(board)
        job = generated[f"qemu-{board}"]
        assert job["context"]["machine"] == p["machine"]
        assert job["context"]["memory"] == p["memory"]
        options = " ".join(job["context"]["extra_options"])
        for device in p.get("devices", []):
            assert f"-device {device}" in options
        kernel = job["actions"][0]["deploy"]["images"]["kernel"]["image_arg"]
        assert p.get("bootargs", "") in kernel and "ktest=" in kernel
        assert ("dtb" in job["actions"][0]["deploy"]["images"]) == ("dtb" in p)


def test_console_is_cut_out_of_a_raw_lava_log():
    import console
    raw = yaml.safe_dump([
        {"dt": "2026-01-01T00:00:00", "lvl": "info", "msg": "start: 2.1 qemu"},
        {"dt": "2026-01-01T00:00:01", "lvl": "target", "msg": "KTAP version 1"},
        {"dt": "2026-01-01T00:00:01", "lvl": "results", "msg": {"case": "reached", "result": "pass"}},
        {"dt": "2026-01-01T00:00:02", "lvl": "target", "msg": "  ok 1 reached"},
    ])
    assert console.console(yaml.safe_load(raw)) == "KTAP version 1\n  ok 1 reached\n"
