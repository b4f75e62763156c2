"""LAVA job definitions for Shootdown's KTAP tests, generated from the board profiles.

    python3 tests/lava/jobs.py --out build/lava-jobs [--kernel-url URL] [--dtb-url URL]
        [--bootargs ARGS]
    python3 tests/lava/jobs.py --validate build/lava-jobs/*.yaml   (needs lava_common on sys.path)

One job per QEMU profile (device type `qemu`) and one for a real Raspberry Pi 4 (device type
`bcm2711-rpi-4-b`, U-Boot `booti` over TFTP). The kernel has no shell, so the test action is a
`monitors` block reading the KTAP lines. LAVA's result of such a job is NOT the verdict: it
flattens nesting, counts SKIP as pass, misses cases that never ran and reports the job complete
when cases fail. The verdict is `harness parse` over the job's log (docs/board-farms.md).
"""

import argparse
import os
import sys

import yaml

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "labgrid"))
import profiles  # noqa: E402  (tests/labgrid/profiles.py: the one reader of qemu/*.toml)

# The kernel's banner (kernel/src/kernel.rs): LAVA otherwise waits for "Linux version".
KERNEL_START = r"Shootdown [0-9]+\.[0-9]+\.[0-9]+ \(aarch64\)"
# KTAP result lines at any depth, anchored at the line start: unanchored, a diagnostic such as
# "# took 483 ms" or a case name's tail matches as a test of its own.
KTAP_RESULT = (r"(?m)^[ \t]*(?P<result>ok|not ok) [0-9]+ "
               r"(?P<test_case_id>[-_a-zA-Z0-9.]+)(?:[ \t]+#[^\r\n]*)?\r?$")
MONITOR = {
    "name": "shootdown-ktap",
    "start": "KTAP version 1",
    "end": "# shootdown: exit",
    "pattern": KTAP_RESULT,
    "fixupdict": {"ok": "pass", "not ok": "fail"},
}
DEFAULT_URL = "file://" + os.path.join(profiles.ROOT, "build", "{}")
# QEMU would exit with the kernel under -semihosting and LAVA calls that an infrastructure
# error ("Connection closed"): the kernel prints its exit line and powers off, and
# -no-shutdown keeps QEMU until LAVA ends the job.
LAVA_QEMU_ARGS = ["-no-reboot", "-no-shutdown", "-nographic"]


def minutes(seconds: float) -> dict:
    return {"minutes": max(1, -(-int(seconds) // 60))}


def common(name: str, device_type: str, run_seconds: float) -> dict:
    return {
        "device_type": device_type,
        "job_name": f"shootdown ktest {name}",
        "priority": "medium",
        "visibility": "public",
        "timeouts": {
            "job": minutes(run_seconds * 2 + 600),
            "action": minutes(run_seconds + 120),
            "connection": {"minutes": 2},
        },
    }


def test_action(run_seconds: float) -> dict:
    return {"test": {"timeout": minutes(run_seconds), "monitors": [dict(MONITOR)]}}


def qemu_job(board: str, kernel_url: str, dtb_url: str, bootargs: str) -> dict:
    p = profiles.load(board)
    run = float(p.get("timeout", 120))
    images = {"kernel": {
        # -append goes with the kernel: the qemu device type has no key for it.
        "image_arg": "-kernel {kernel} -append '%s'" % profiles.bootargs(p, bootargs),
        "url": kernel_url,
    }}
    if profiles.dtb_path(p):
        images["dtb"] = {"image_arg": "-dtb {dtb}", "url": dtb_url}
    extra = profiles.extra_args(p) + LAVA_QEMU_ARGS
    # The device type's template takes -smp/-device as whole option strings.
    options, i = [], 0
    while i < len(extra):
        if extra[i].startswith("-") and i + 1 < len(extra) and not extra[i + 1].startswith("-"):
            options.append(f"{extra[i]} {extra[i + 1]}")
            i += 2
        else:
            options.append(extra[i])
            i += 1
    job = common(board, "qemu", run)
    job["context"] = {
        "arch": "arm64",
        "machine": p["machine"],
        "cpu": profiles.cpu(p),
        "memory": p["memory"],
        "extra_options": options,
    }
    job["actions"] = [
        {"deploy": {"to": "tmpfs", "timeout": {"minutes": 5}, "images": images}},
        {"boot": {"method": "qemu", "media": "tmpfs", "timeout": {"minutes": 2},
                  "parameters": {"kernel-start-message": KERNEL_START}}},
        test_action(run),
    ]
    return job


def rpi4_job(kernel_url: str, dtb_url: str, bootargs: str) -> dict:
    """A real Pi 4 on LAVA's U-Boot flow: the worker serves kernel and DTB over TFTP."""
    run = 600.0  # real hardware at 115200 baud, no TCG: well inside this
    job = common("rpi4", "bcm2711-rpi-4-b", run)
    job["actions"] = [
        {"deploy": {"to": "tftp", "timeout": {"minutes": 5},
                    "kernel": {"url": kernel_url, "type": "image"},
                    "dtb": {"url": dtb_url}}},
        {"boot": {"method": "u-boot", "timeout": {"minutes": 5},
                  "commands": [
                      "setenv autoload no",
                      "dhcp",
                      "setenv serverip {SERVER_IP}",
                      "tftp {KERNEL_ADDR} {KERNEL}",
                      "tftp {DTB_ADDR} {DTB}",
                      f"setenv bootargs '{bootargs}'",
                      "booti {KERNEL_ADDR} - {DTB_ADDR}",
                  ],
                  "parameters": {"kernel-start-message": KERNEL_START}}},
        test_action(run),
    ]
    return job


def generate(out: str, kernel_url: str, dtb_url: str, bootargs: str) -> list:
    os.makedirs(out, exist_ok=True)
    jobs = {f"qemu-{b}": qemu_job(b, kernel_url, dtb_url, bootargs) for b in profiles.names()}
    jobs["bcm2711-rpi-4-b"] = rpi4_job(kernel_url, dtb_url, bootargs)
    written = []
    for name, job in jobs.items():
        path = os.path.join(out, f"{name}.yaml")
        profiles.write_yaml(job, path, "# Generated by tests/lava/jobs.py from qemu/*.toml: do not edit.\n"
                                       "# The job's LAVA result is not the verdict: run the log through "
                                       "`harness parse`.\n")
        written.append(path)
    return written


def validate(paths: list) -> int:
    from lava_common.schemas import extra_checks, validate as lava_validate  # pylint: disable=import-outside-toplevel
    bad = 0
    for path in paths:
        with open(path) as f:
            job = yaml.safe_load(f)
        try:
            lava_validate(job, strict=True)
            extra_checks(job)
            print(f"{path}: valid")
        except Exception as e:  # voluptuous.Invalid and friends  # pylint: disable=broad-except
            print(f"{path}: INVALID: {e}")
            bad += 1
    return 1 if bad or not paths else 0


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out")
    ap.add_argument("--kernel-url", default=DEFAULT_URL.format("shootdown.img"))
    ap.add_argument("--dtb-url", default=DEFAULT_URL.format("dtb/bcm2711-rpi-4-b.dtb"))
    ap.add_argument("--bootargs", default="ktest=*")
    ap.add_argument("--validate", nargs="*")
    a = ap.parse_args(argv)
    if a.validate is not None:
        return validate(a.validate)
    if not a.out:
        ap.error("--out DIR or --validate FILE...")
    for path in generate(a.out, a.kernel_url, a.dtb_url, a.bootargs):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
