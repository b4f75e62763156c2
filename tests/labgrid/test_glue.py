"""The farm glue without booting anything: environments against the harness's QEMU command
line (so they cannot drift from qemu/*.toml), and the SDCL strategy against a scripted loader.

    build/labgrid-venv/bin/pytest tests/labgrid/test_glue.py --shootdown-harness target/debug/harness
"""

import os
import shlex
import struct
import subprocess
import tempfile
import zlib

import pytest
from labgrid import Environment
from pexpect import TIMEOUT

import profiles
import shootdown_labgrid as sl

# Console and exit plumbing each side adds for itself; everything else must agree.
HARNESS_ONLY = {"-display", "-monitor", "-serial", "-semihosting"}
LABGRID_ONLY = {"-nographic", "-no-shutdown"}
VALUED = {"-M", "-machine", "-cpu", "-smp", "-m", "-dtb", "-device", "-kernel", "-append",
          "-display", "-monitor", "-serial"}


def options(argv):
    """(flag, value) pairs in order; -M spelled -machine."""
    out, i = [], 1
    while i < len(argv):
        flag = "-machine" if argv[i] == "-M" else argv[i]
        if flag in VALUED or argv[i] == "-M":
            out.append((flag, argv[i + 1]))
            i += 2
        else:
            out.append((flag, None))
            i += 1
    return out


@pytest.mark.parametrize("board", profiles.names())
def test_environment_boots_what_the_harness_boots(board, tmp_path, request):
    kernel = os.path.join(profiles.ROOT, "build", "shootdown.img")
    env_file = tmp_path / f"{board}.yaml"
    profiles.write_yaml(profiles.labgrid_env(board, kernel, "ktest=*", "qemu-system-aarch64"),
                        str(env_file), "")
    qemu = Environment(str(env_file)).get_target("main").get_driver("QEMUDriver", activate=False)
    ours = [(f, v) for f, v in options(qemu.get_qemu_base_args()) if f not in LABGRID_ONLY]

    harness = request.config.option.shootdown_harness
    line = subprocess.run([harness, "test", "--board", board, "--kernel", kernel, "--bootargs",
                           "ktest=*", "--dry-run"], capture_output=True, text=True, check=True,
                          cwd=profiles.ROOT).stdout
    argv = next(shlex.split(l) for l in line.splitlines() if "qemu-system" in l)
    theirs = [(f, v) for f, v in options(argv) if f not in HARNESS_ONLY]

    p = profiles.load(board)
    if "cpu" not in p:  # QEMUDriver insists on -cpu: it must be the machine's own
        assert ("-cpu", profiles.MACHINE_CPU[profiles.machine_type(p)]) in ours
        ours.remove(("-cpu", profiles.MACHINE_CPU[profiles.machine_type(p)]))
    key = lambda o: (o[0] != "-device", o)  # order matters only among devices
    assert sorted(ours, key=key) == sorted(theirs, key=key)
    assert [o for o in ours if o[0] == "-device"] == [o for o in theirs if o[0] == "-device"]


def test_a_changed_profile_changes_the_environment(monkeypatch):
    """The comparison above is not vacuous: a profile edit shows up in the environment."""
    real = profiles.load("virt-smmu")
    monkeypatch.setattr(profiles, "load", lambda b: {**real, "devices": real["devices"][:1]})
    env = profiles.labgrid_env("virt-smmu", "k", "", "qemu")
    assert env["targets"]["main"]["drivers"]["QEMUDriver"]["extra_args"].count("-device") == 1


# ---------------------------------------------------------------------------------------------
# SDCL against a scripted loader that decodes what it gets by the protocol's table.

def image(size=4096, image_size=0x20000):
    k = bytearray(size)
    struct.pack_into("<Q", k, 16, image_size)
    k[56:60] = b"ARM\x64"
    return bytes(k)


def test_header_layout():
    k = image()
    h = sl.sdcl_header(k, b"ktest=*", sl.MODE_APPEND)
    assert len(h) == 28
    magic, ver, flags, klen, isize, blen, pcrc, hcrc = struct.unpack("<4sHHIIIII", h)
    assert (magic, ver, flags, klen, isize, blen) == (b"SDCL", 1, 1, 4096, 0x20000, 7)
    assert pcrc == zlib.crc32(k + b"ktest=*") and hcrc == zlib.crc32(h[:24])
    assert zlib.crc32(b"123456789") == 0xCBF43926  # the loader's CRC-32 check value
    with pytest.raises(sl.SdclError):
        sl.sdcl_header(bytes(4096), b"")


def test_reply_lines():
    assert sl.sdcl_reply("@@SDCL READY 1 max=0x3c00000") == ("READY", {"version": 1, "max": 0x3c00000})
    assert sl.sdcl_reply("@@SDCL ACK HEADER kernel=0x400000 dtb=0x2eff2000")[1]["dtb"] == 0x2eff2000
    assert sl.sdcl_reply("@@SDCL NAK 6 payload checksum 0x1, expected 0x2") == \
        ("NAK", {"code": 6, "message": "payload checksum 0x1, expected 0x2"})
    assert sl.sdcl_reply("Shootdown 0.1.0 (aarch64)") is None
    assert sl.sdcl_reply("@@SDCL WHAT") is None


class FakeLoader:
    """A console whose far end is an SDCL loader: corrupts the first payload if asked."""

    def __init__(self, corrupt_first=False, nak_code=6):
        self.out = bytearray(b"firmware noise\r\n@@SDCL READY 1 max=0x3c00000\r\n")
        self.rx = bytearray()
        self.corrupt, self.nak, self.header = corrupt_first, nak_code, None

    def read(self, size=1, timeout=0.0, max_size=None):
        if not self.out:
            raise TIMEOUT("nothing")
        data, self.out[:] = bytes(self.out), b""
        return data

    def write(self, data):
        self.rx += data
        if self.header is None and len(self.rx) >= 28:
            h, self.rx[:] = bytes(self.rx[:28]), self.rx[28:]
            assert zlib.crc32(h[:24]) == struct.unpack_from("<I", h, 24)[0]
            self.header = struct.unpack("<4sHHIIIII", h)
            self.out += b"@@SDCL ACK HEADER kernel=0x400000 dtb=0x2eff2000\r\n"
        if self.header and len(self.rx) >= self.header[3] + self.header[5]:
            payload, self.rx[:] = bytes(self.rx), b""
            crc = zlib.crc32(payload)
            if self.corrupt:
                self.corrupt = False
                crc ^= 1
            if crc != self.header[6]:
                self.out += b"@@SDCL NAK %d payload checksum\r\n@@SDCL READY 1 max=0x3c00000\r\n" % self.nak
            else:
                self.out += b"@@SDCL ACK DATA crc=0x%x\r\nShootdown 0.1.0 (aarch64)\r\n" % crc
                self.payload = payload
            self.header = None
        return len(data)


class Strategy(sl.ShootdownStrategy):
    """The push logic alone, on a fake console, with a kernel from memory."""

    def __init__(self, console, kernel, retries=2):  # pylint: disable=super-init-not-called
        self.console, self.kernel, self.bootargs, self.baud, self.retries = console, kernel, "ktest=*", 115200, retries
        self.log, self.pushed = bytearray(), None
        self._reader = sl.LineReader(console, self.log)
        self.image = None

    def _kernel_bytes(self):
        return self.kernel


def push(loader, retries=2):
    s = Strategy(loader, image(), retries)
    s._wait_ready(1)
    s._push()
    return s


def test_push_delivers_kernel_and_bootargs():
    loader = FakeLoader()
    s = push(loader)
    assert loader.payload == image() + b"ktest=*"
    assert s.pushed["attempts"] == 1 and s.pushed["kernel"] == 0x400000
    assert b"firmware noise" in s.log


def test_push_retries_a_line_error_then_succeeds():
    s = push(FakeLoader(corrupt_first=True))
    assert s.pushed["attempts"] == 2


def test_push_gives_up_on_a_refusal_that_retrying_cannot_fix():
    with pytest.raises(sl.SdclError, match="NAK 7"):
        push(FakeLoader(corrupt_first=True, nak_code=7))


def test_push_refuses_locally_what_does_not_fit():
    loader = FakeLoader()
    loader.out = bytearray(b"@@SDCL READY 1 max=0x1000\r\n")
    with pytest.raises(sl.SdclError, match="room"):
        push(loader)


def test_no_loader_is_an_error_not_a_hang():
    loader = FakeLoader()
    loader.out = bytearray(b"just a kernel talking\r\n")
    with pytest.raises(sl.SdclError, match="no @@SDCL READY"):
        push(loader)


def test_the_real_pi_environment_binds_serial_power_and_strategy(monkeypatch):
    monkeypatch.setenv("LG_SHOOTDOWN_PORT", "/dev/ttyUSB0")
    monkeypatch.setenv("LG_SHOOTDOWN_POWER_ON", "/bin/true on")
    monkeypatch.setenv("LG_SHOOTDOWN_POWER_OFF", "/bin/true off")
    monkeypatch.setenv("LG_SHOOTDOWN_BOOTARGS", "ktest=*")
    env = Environment(os.path.join(os.path.dirname(__file__), "env", "rpi4-local.yaml"))
    target = env.get_target("main")
    s = target.get_driver("Strategy", activate=False)
    assert type(s).__name__ == "ShootdownStrategy" and s.chainload and s.bootargs == "ktest=*"
    assert type(s.console).__name__ == "SerialDriver"
    assert type(s.power).__name__ == "ExternalPowerDriver"
    assert os.path.realpath(env.config.get_image_path("kernel")) == \
        os.path.realpath(os.path.join(profiles.ROOT, "build", "shootdown.img"))


def test_the_place_environment_names_the_place_and_the_same_drivers():
    # A RemotePlace needs a coordinator to bind: check the file as labgrid reads it.
    from labgrid.util.yaml import load, resolve_templates
    with open(os.path.join(os.path.dirname(__file__), "env", "rpi4-place.yaml")) as f:
        data = load(f)
    resolve_templates(data, {"BASE": "/b", "LG_PLACE": "pi4-a", "LG_SHOOTDOWN_POWER_ON": "on",
                             "LG_SHOOTDOWN_POWER_OFF": "off", "LG_SHOOTDOWN_BOOTARGS": "ktest=*"})
    main = data["targets"]["main"]
    assert main["resources"] == {"RemotePlace": {"name": "pi4-a"}}
    assert set(main["drivers"]) == {"SerialDriver", "ExternalPowerDriver", "ShootdownStrategy"}
    assert main["drivers"]["ShootdownStrategy"]["chainload"] is True
