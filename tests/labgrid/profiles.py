"""Board profiles (qemu/*.toml) as labgrid environments and LAVA QEMU arguments.

One reading of the profiles for both farms, checked against the harness's own QEMU command line
by test_envs.py, so an environment cannot drift from the profile it came from.

    python3 tests/labgrid/profiles.py env BOARD --kernel IMG --bootargs ARGS --out FILE.yaml
"""

import argparse
import os
import shlex
import shutil
import sys
try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PROFILES = os.path.join(ROOT, "qemu")
KEYS = {"description", "machine", "cpu", "smp", "memory", "dtb", "devices", "args", "bootargs",
        "timeout", "test_timeout", "firmware_banner", "must_run"}
# QEMUDriver always passes -cpu; a profile without one gets the machine's own CPU.
MACHINE_CPU = {"raspi4b": "cortex-a72"}
# No -semihosting: QEMU would exit with the kernel and labgrid's QMP `quit` then fails.
# The kernel ends with `# shootdown: exit N` and PSCI SYSTEM_OFF (or a halt); -no-shutdown keeps
# QEMU there until the strategy switches it off.
LABGRID_QEMU_ARGS = ["-no-reboot", "-no-shutdown"]


class ProfileError(Exception):
    pass


# Beside the profiles, the list of users' own QEMU lines (`harness matrix`): not a profile.
MATRIX_FILE = "matrix.toml"


def names():
    return sorted(f[:-5] for f in os.listdir(PROFILES)
                  if f.endswith(".toml") and f != MATRIX_FILE)


def load(board: str) -> dict:
    path = os.path.join(PROFILES, f"{board}.toml")
    with open(path, "rb") as f:
        p = tomllib.load(f)
    unknown = set(p) - KEYS
    if unknown:  # the harness refuses these too: a typo must not drop a device
        raise ProfileError(f"{path}: unknown keys {sorted(unknown)}")
    if "machine" not in p:
        raise ProfileError(f"{path}: no machine")
    p["name"] = board
    if isinstance(p.get("memory"), int):
        p["memory"] = f"{p['memory']}M"
    if "smp" in p:
        p["smp"] = str(p["smp"])
    return p


def machine_type(p: dict) -> str:
    return p["machine"].split(",")[0]


def cpu(p: dict) -> str:
    if "cpu" in p:
        return p["cpu"]
    try:
        return MACHINE_CPU[machine_type(p)]
    except KeyError:
        raise ProfileError(f"qemu/{p['name']}.toml has no cpu and machine "
                           f"{machine_type(p)} has no known default") from None


def dtb_path(p: dict):
    if "dtb" not in p:
        return None
    return p["dtb"] if os.path.isabs(p["dtb"]) else os.path.join(ROOT, p["dtb"])


def extra_args(p: dict) -> list:
    """The profile's arguments that QEMUDriver has no key for (it has machine, cpu, memory, dtb)."""
    args = []
    if "smp" in p:
        args += ["-smp", p["smp"]]
    for d in p.get("devices", []):
        args += ["-device", d]
    return args + list(p.get("args", []))


def bootargs(p: dict, extra: str) -> str:
    return " ".join(s for s in (p.get("bootargs", "").strip(), extra.strip()) if s)


def labgrid_env(board: str, kernel: str, extra_bootargs: str, qemu_bin: str) -> dict:
    p = load(board)
    driver = {
        "qemu_bin": "qemu",
        "machine": p["machine"],
        "cpu": cpu(p),
        "memory": p["memory"],
        "kernel": "kernel",
        "extra_args": shlex.join(extra_args(p) + LABGRID_QEMU_ARGS),
        "boot_args": bootargs(p, extra_bootargs),
        "display": "none",
    }
    images = {"kernel": os.path.abspath(kernel)}
    if dtb_path(p):
        driver["dtb"] = "dtb"
        images["dtb"] = dtb_path(p)
    strategy = {
        "timeout": float(p.get("timeout", 120)),
        "quiet_timeout": float(p.get("test_timeout", 0)),
    }
    return {
        "targets": {"main": {"drivers": {"QEMUDriver": driver, "ShootdownStrategy": strategy}}},
        "tools": {"qemu": qemu_bin},
        "images": images,
        "imports": [os.path.join(ROOT, "tests", "labgrid", "shootdown_labgrid.py")],
    }


def write_yaml(data: dict, out: str, header: str):
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        f.write(header)
        yaml.safe_dump(data, f, sort_keys=False, width=200)
    os.replace(tmp, out)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    env = sub.add_parser("env", help="a labgrid environment for QEMU board BOARD")
    env.add_argument("board", choices=names())
    env.add_argument("--kernel", default=os.path.join(ROOT, "build", "shootdown.img"))
    env.add_argument("--bootargs", default="ktest=*")
    env.add_argument("--qemu", default="qemu-system-aarch64")
    env.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    if a.cmd == "env":
        qemu = a.qemu if os.path.sep in a.qemu else (shutil.which(a.qemu) or a.qemu)
        write_yaml(labgrid_env(a.board, a.kernel, a.bootargs, qemu), a.out,
                   f"# Generated from qemu/{a.board}.toml by tests/labgrid/profiles.py: do not edit.\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
