"""A labgrid farm on loopback: the distributed path a team uses to share boards.

The stand-in for a Pi on a lab host is QEMU `raspi4b` running build/chainloader.img with its UART
on a pseudo-terminal. This script starts `labgrid-coordinator` and a `labgrid-exporter` that
exports that terminal (the exporter serves it over RFC 2217 through ser2net), creates and acquires
a place, runs tests/labgrid/test_ktap.py against the place with --lg-coordinator (the kernel goes
through the SDCL chainloader over the network serial port), and releases the place at the end,
pass or fail. Only 127.0.0.1 is used. Exit status: pytest's, or 1 if the farm itself failed.

    build/labgrid-venv/bin/python tests/labgrid/farm_loopback.py [--bootargs ARGS] [--out DIR]
"""

import argparse
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import profiles

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = profiles.ROOT
BIN = os.path.dirname(sys.executable)
EXPORTER = "loopback-host"
GROUP = "shootdown-pi"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Farm:
    def __init__(self, out):
        self.out = out
        self.procs = []

    def spawn(self, name, argv, **kw):
        log = open(os.path.join(self.out, f"{name}.log"), "wb")
        print(f"farm: {name}: {shlex.join(argv)}", flush=True)
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, **kw)
        self.procs.append((name, p))
        return p

    def stop(self):
        for name, p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()

    def wait_for(self, name, pattern, timeout):
        """Waits until `pattern` appears in NAME's log; returns the match."""
        path = os.path.join(self.out, f"{name}.log")
        proc = dict(self.procs)[name]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(path, "rb") as f:
                m = re.search(pattern, f.read())
            if m:
                return m
            if proc.poll() is not None:
                break
            time.sleep(0.2)
        with open(path, errors="replace") as f:
            raise RuntimeError(f"{name}: no {pattern!r} within {timeout} s; its log:\n{f.read()}")


def client(coordinator, place, *args, check=True):
    argv = [os.path.join(BIN, "labgrid-client"), "-x", coordinator, "-p", place, *args]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    print(f"farm: labgrid-client -p {place} {' '.join(args)}" + (f"\n{p.stdout}{p.stderr}".rstrip()
          if p.returncode or args[0] == "show" else ""), flush=True)
    if check and p.returncode:
        raise RuntimeError(f"labgrid-client {' '.join(args)} failed ({p.returncode})")
    return p


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootargs", default="ktest=*")
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "labgrid", "farm"))
    ap.add_argument("--kernel", default=os.path.join(ROOT, "build", "shootdown.img"))
    ap.add_argument("--chainloader", default=os.path.join(ROOT, "build", "chainloader.img"))
    ap.add_argument("--harness", default=os.path.join(ROOT, "target", "debug", "harness"))
    ap.add_argument("--qemu", default="qemu-system-aarch64")
    ap.add_argument("--name", default="farm-raspi4b", help="run name: OUT/NAME.{log,json,junit.xml}")
    a = ap.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    pi = profiles.load("raspi4b")
    for f in (a.kernel, a.chainloader, profiles.dtb_path(pi), a.harness):
        if not os.path.isfile(f):
            print(f"farm: missing {f} (make image chainloader dtb)", file=sys.stderr)
            return 1
    farm = Farm(a.out)
    tmp = tempfile.mkdtemp(prefix="shootdown-farm-")
    coordinator = f"127.0.0.1:{free_port()}"
    place = f"shootdown-loop-{os.getpid()}"
    acquired = False
    rc = 1
    try:
        # The "board": no -no-reboot, so a QMP reset restarts the chainloader as a relay would.
        qmp = os.path.join(tmp, "qmp.sock")
        farm.spawn("qemu", [a.qemu, "-M", "raspi4b", "-display", "none", "-monitor", "none",
                            "-serial", "pty", "-qmp", f"unix:{qmp},server=on,wait=off",
                            "-dtb", profiles.dtb_path(pi), "-kernel", a.chainloader])
        pts = farm.wait_for("qemu", rb"/dev/pts/[0-9]+", 30).group(0).decode()

        farm.spawn("coordinator", [os.path.join(BIN, "labgrid-coordinator"), "-l", coordinator],
                   cwd=tmp)
        # The exporter's config is a Jinja2 template: no YAML `#` comments in it.
        exporter_cfg = os.path.join(tmp, "exporter.yaml")
        with open(exporter_cfg, "w") as f:
            f.write(f"{GROUP}:\n  RawSerialPort:\n    port: {pts}\n    speed: 115200\n")
        deadline = time.monotonic() + 30
        while True:  # the coordinator takes a moment to listen
            try:
                socket.create_connection(tuple([coordinator.split(":")[0], int(coordinator.split(":")[1])]), 1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        farm.spawn("exporter", [os.path.join(BIN, "labgrid-exporter"), "-c", coordinator, "-n", EXPORTER,
                                "--hostname", "127.0.0.1", exporter_cfg])
        deadline = time.monotonic() + 30
        while EXPORTER not in subprocess.run(
                [os.path.join(BIN, "labgrid-client"), "-x", coordinator, "resources"],
                capture_output=True, text=True).stdout:
            if time.monotonic() > deadline or farm.procs[-1][1].poll() is not None:
                raise RuntimeError("the exporter never registered its serial port (see exporter.log)")
            time.sleep(0.5)

        client(coordinator, place, "create")
        client(coordinator, place, "add-match", f"{EXPORTER}/{GROUP}/NetworkSerialPort")
        client(coordinator, place, "acquire")
        acquired = True

        env = os.path.join(a.out, "raspi4b-place.yaml")
        power = f"{shlex.quote(sys.executable)} {shlex.quote(os.path.join(HERE, 'qemu_power.py'))} {shlex.quote(qmp)}"
        profiles.write_yaml({
            "targets": {"main": {
                "resources": {"RemotePlace": {"name": place}},
                "drivers": {
                    "SerialDriver": {},
                    "ExternalPowerDriver": {"cmd_on": f"{power} on", "cmd_off": f"{power} off",
                                            "cmd_cycle": f"{power} cycle"},
                    "ShootdownStrategy": {
                        "chainload": True, "image": "kernel",
                        "bootargs": profiles.bootargs(pi, a.bootargs),
                        # The push over the network port plus raspi4b's test run under TCG.
                        "timeout": float(pi.get("timeout", 180)) + 240,
                        "quiet_timeout": float(pi.get("test_timeout", 90)) + 60,
                    },
                },
            }},
            "images": {"kernel": os.path.abspath(a.kernel)},
            "imports": [os.path.join(HERE, "shootdown_labgrid.py")],
        }, env, "# Generated by tests/labgrid/farm_loopback.py for one run.\n")

        pytest = subprocess.run([
            os.path.join(BIN, "pytest"), "-p", "no:cacheprovider", "-q", "-rfE",
            os.path.join(HERE, "test_ktap.py"), "--lg-env", env, "--lg-coordinator", coordinator,
            "--shootdown-name", a.name, "--shootdown-out", a.out, "-o", f"junit_suite_name={a.name}",
            "--shootdown-harness", a.harness, "--junitxml", os.path.join(a.out, f"{a.name}.junit.xml"),
        ], cwd=ROOT)
        rc = pytest.returncode
    except Exception as e:  # pylint: disable=broad-except
        print(f"farm: {e}", file=sys.stderr)
        rc = 1
    finally:
        if acquired:
            client(coordinator, place, "release", check=False)
            shown = client(coordinator, place, "show", check=False).stdout
            if not re.search(r"acquired:\s*None", shown):
                print("farm: the place is still acquired after release", file=sys.stderr)
                rc = rc or 1
        farm.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
