"""Power for the loopback farm's stand-in Pi: QMP commands to a QEMU, run by ExternalPowerDriver
where a real lab runs its relay command.

    python3 qemu_power.py QMP_SOCKET on|off|cycle
"""

import json
import socket
import sys

COMMANDS = {
    "off": ["stop"],
    # A reset restarts the chainloader from the top: a fresh READY, as after a relay cycle.
    "on": ["system_reset", "cont"],
    "cycle": ["stop", "system_reset", "cont"],
}


def qmp(path, commands):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        f = s.makefile("rw")
        json.loads(f.readline())  # greeting
        for cmd in ["qmp_capabilities"] + commands:
            f.write(json.dumps({"execute": cmd}) + "\n")
            f.flush()
            while True:
                reply = json.loads(f.readline())
                if "event" in reply:
                    continue
                if "error" in reply:
                    raise SystemExit(f"QMP {cmd}: {reply['error']}")
                break


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[2] not in COMMANDS:
        raise SystemExit(__doc__)
    qmp(sys.argv[1], COMMANDS[sys.argv[2]])
