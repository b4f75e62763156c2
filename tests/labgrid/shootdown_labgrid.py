"""Shootdown on labgrid: a strategy that boots the kernel and collects its console.

Loaded by labgrid through the environment's `imports:` list. Two ways in:

- QEMU (`QEMUDriver` is power and console): off -> kernel_pushed (QEMU loads the image) ->
  tests_done.
- A board with the SDCL UART chainloader (`chainload: true`; any console, local or RFC 2217
  through an exporter, and a power driver): off -> loader_ready (power cycled, `@@SDCL READY`
  seen) -> kernel_pushed (`@@SDCL ACK DATA` with our CRC) -> tests_done.

`tests_done` means the kernel printed `# shootdown: exit N`; the console from power-on to there is
in `strategy.log`. Verdicts are not made here: the caller feeds the log to `harness parse`.
"""

import enum
import re
import struct
import threading
import time
import zlib

import attr

from labgrid.factory import target_factory
from labgrid.step import step
from labgrid.strategy.common import Strategy, StrategyError, never_retry
from pexpect import TIMEOUT

EXIT_LINE = re.compile(rb"^# shootdown: exit (\d+)\r?$", re.M)


# ---------------------------------------------------------------------------------------------
# The SDCL wire format (boot/chainloader/src/protocol.rs is the definition).

SDCL_MAGIC = b"SDCL"
SDCL_VERSION = 1
SDCL_PREFIX = "@@SDCL "
MODE_KEEP, MODE_APPEND, MODE_REPLACE = 0, 1, 2
# NAK codes worth sending again: header CRC, timeout, payload CRC, UART line errors.
TRANSIENT_NAKS = {1, 5, 6, 9}
IMAGE_MAGIC_AT, IMAGE_SIZE_AT = 56, 16


class SdclError(Exception):
    """A push that cannot succeed (refused, no loader, wrong CRC, timeout)."""


def image_size(kernel: bytes) -> int:
    """The arm64 Image header's image_size (0 means the file length), or raise."""
    if kernel[IMAGE_MAGIC_AT:IMAGE_MAGIC_AT + 4] != b"ARM\x64":
        raise SdclError("not an arm64 Image (no ARM\\x64 magic at offset 56)")
    (size,) = struct.unpack_from("<Q", kernel, IMAGE_SIZE_AT)
    return size or len(kernel)


def sdcl_header(kernel: bytes, bootargs: bytes, mode: int = MODE_APPEND) -> bytes:
    """The 28-byte little-endian header: magic, version, flags, lengths, payload and header CRC."""
    body = struct.pack("<4sHHIIII", SDCL_MAGIC, SDCL_VERSION, mode, len(kernel),
                       image_size(kernel), len(bootargs), zlib.crc32(kernel + bootargs))
    return body + struct.pack("<I", zlib.crc32(body))


def sdcl_reply(line: str):
    """A loader line as (kind, fields), or None for an ordinary log line."""
    if not line.startswith(SDCL_PREFIX):
        return None
    words = line[len(SDCL_PREFIX):].split(" ")
    try:
        if words[0] == "READY":
            return "READY", {"version": int(words[1]), "max": int(words[2].removeprefix("max="), 16)}
        if words[:2] == ["ACK", "HEADER"]:
            return "ACK HEADER", {"kernel": int(words[2].removeprefix("kernel="), 16),
                                  "dtb": int(words[3].removeprefix("dtb="), 16)}
        if words[:2] == ["ACK", "DATA"]:
            return "ACK DATA", {"crc": int(words[2].removeprefix("crc="), 16)}
        if words[0] == "NAK":
            return "NAK", {"code": int(words[1]), "message": " ".join(words[2:])}
    except (IndexError, ValueError):
        pass
    return None  # a protocol line this side cannot read: treated as noise


class LineReader:
    """Lines from a labgrid console; every byte read is also kept in `raw` (the log)."""

    def __init__(self, console, raw: bytearray):
        self.console, self.raw, self.buf = console, raw, b""

    def feed(self, timeout: float) -> bool:
        try:
            data = self.console.read(size=1, timeout=timeout, max_size=65536)
        except TIMEOUT:
            return False
        self.raw += data
        self.buf += data
        return bool(data)

    def line(self, deadline: float):
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if not self.feed(min(left, 1.0)):
                time.sleep(0.05)  # QEMUDriver returns b"" on a closed socket instead of blocking
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode("utf-8", "replace").rstrip("\r")

    def reply(self, deadline: float, skip_ready: bool):
        while (line := self.line(deadline)) is not None:
            r = sdcl_reply(line)
            if r and not (skip_ready and r[0] == "READY"):
                return r
        return None


def write_all(console, data: bytes):
    """console.write may take only part (QEMUDriver's socket is non-blocking)."""
    view = memoryview(data)
    while view:
        try:
            n = console.write(bytes(view[:65536]))
        except BlockingIOError:
            n = 0
        if not n:
            time.sleep(0.01)
        view = view[n or 0:]


# ---------------------------------------------------------------------------------------------


class Status(enum.Enum):
    unknown = 0
    off = 1
    loader_ready = 2
    kernel_pushed = 3
    tests_done = 4


def _register(cls):
    # labgrid's `imports:` loads this file again for each environment: register once.
    if cls.__name__ not in target_factory.all_classes:
        target_factory.reg_driver(cls)
    return cls


@_register
@attr.s(eq=False)
class ShootdownStrategy(Strategy):
    """Boots Shootdown and reads its console until `# shootdown: exit N`.

    Attributes (environment YAML):
        chainload: push `image` through the SDCL chainloader (else the power driver boots it).
        image: key in `images:` of the arm64 Image to push (chainload only).
        bootargs: appended to the board's /chosen/bootargs by the chainloader (chainload only;
            QEMU gets them through QEMUDriver's boot_args).
        baud: the line rate, to allow for the payload's time on the wire.
        timeout: seconds from power-on to the exit line.
        quiet_timeout: seconds without any console output before giving up (0: off).
        ready_timeout: seconds to wait for the loader's first READY.
        retries: pushes repeated after a transient NAK.
    """

    bindings = {"power": "PowerProtocol", "console": "ConsoleProtocol"}

    status = attr.ib(default=Status.unknown)
    chainload = attr.ib(default=False, validator=attr.validators.instance_of(bool))
    image = attr.ib(default="kernel", validator=attr.validators.instance_of(str))
    bootargs = attr.ib(default="", validator=attr.validators.instance_of(str))
    baud = attr.ib(default=115200, validator=attr.validators.instance_of(int))
    timeout = attr.ib(default=180.0, converter=float)
    quiet_timeout = attr.ib(default=90.0, converter=float)
    ready_timeout = attr.ib(default=60.0, converter=float)
    retries = attr.ib(default=2, validator=attr.validators.instance_of(int))

    def __attrs_post_init__(self):
        super().__attrs_post_init__()
        self.log = bytearray()
        self.exit_code = None
        self.pushed = None
        self._reader = None
        self._started = None
        self._ready_max = 0

    @never_retry
    @step(args=["status"])
    def transition(self, status, *, step):  # pylint: disable=redefined-outer-name
        if not isinstance(status, Status):
            status = Status[status]
        if status == self.status:
            step.skip("nothing to do")
            return
        if status == Status.unknown:
            raise StrategyError(f"can not transition to {status}")
        if status == Status.off:
            self._off()
        elif status == Status.loader_ready:
            if not self.chainload:
                raise StrategyError("loader_ready needs `chainload: true` (an SDCL board)")
            self._off()
            self._power_on()
            self._wait_ready(self.ready_timeout)
        elif status == Status.kernel_pushed:
            if self.chainload:
                if self.status != Status.loader_ready:
                    self.transition(Status.loader_ready)
                self._push()
            else:
                self._off()
                self._power_on()
        elif status == Status.tests_done:
            if self.status != Status.kernel_pushed:
                self.transition(Status.kernel_pushed)
            self._read_to_exit()
        self.status = status

    @never_retry
    @step(args=["status"])
    def force(self, status, *, step):  # pylint: disable=redefined-outer-name,unused-argument
        if not isinstance(status, Status):
            status = Status[status]
        self.target.activate(self.power)
        self.target.activate(self.console)
        self._reader = LineReader(self.console, self.log)
        self.status = status

    def _off(self):
        self.target.activate(self.power)
        # Keep reading while switching off: a kernel still printing (a fault loop after its exit
        # line) fills QEMU's console socket, its vCPU then blocks holding QEMU's global lock and
        # QMP `quit` never returns.
        stop = threading.Event()
        drain = None
        if self.console in self.target.drivers and self.console.state.name == "active":
            drain = threading.Thread(target=self._drain, args=(stop,), daemon=True)
            drain.start()
        try:
            self.power.off()
        finally:
            stop.set()
            if drain:
                drain.join(5)
        self.target.deactivate(self.console)

    def _drain(self, stop):
        # _read, not read: labgrid's step bookkeeping behind read() is not thread-safe.
        while not stop.is_set():
            try:
                if not self.console._read(size=1, timeout=0.2, max_size=65536):  # pylint: disable=protected-access
                    time.sleep(0.05)
            except Exception:  # pylint: disable=broad-except
                time.sleep(0.05)  # TIMEOUT, or the console went away under us

    def _power_on(self):
        self.log.clear()
        self.exit_code = None
        self._started = time.monotonic()
        # A serial console opened before power-on sees the board's first bytes; QEMUDriver's
        # console only exists once QEMU runs, and activating it is all it needs.
        self.target.activate(self.console)
        self.power.on()
        self._reader = LineReader(self.console, self.log)

    def _wait_ready(self, timeout: float) -> int:
        reply = self._reader.reply(time.monotonic() + timeout, skip_ready=False)
        while reply and reply[0] != "READY":  # a stale ACK/NAK from an earlier session
            reply = self._reader.reply(time.monotonic() + timeout, skip_ready=False)
        if reply is None:
            raise SdclError(f"no @@SDCL READY within {timeout:.0f} s: is the chainloader the "
                            "board's kernel, was it reset, are TX/RX crossed?")
        if reply[1]["version"] != SDCL_VERSION:
            raise SdclError(f"the loader speaks SDCL version {reply[1]['version']}, "
                            f"this strategy {SDCL_VERSION}: reflash it")
        self._ready_max = reply[1]["max"]
        return self._ready_max

    def _push(self):
        kernel = self._kernel_bytes()
        bootargs = self.bootargs.encode()
        header = sdcl_header(kernel, bootargs)
        footprint = max(len(kernel), image_size(kernel))
        crc = zlib.crc32(kernel + bootargs)
        # Twice the payload's time on the wire at `baud` (a busy host or a network port is
        # slower than the line), plus the loader's checking.
        data_wait = 30 + 2 * (len(kernel) + len(bootargs)) * 10 / self.baud
        room = self._ready_max
        for attempt in range(1, self.retries + 2):
            if footprint > room:
                raise SdclError(f"the kernel needs {footprint} bytes, the loader has room for {room}")
            write_all(self.console, header)
            reply = self._reader.reply(time.monotonic() + 5, skip_ready=True)
            if reply is None:
                raise SdclError("no ACK HEADER within 5 s")
            if reply[0] == "ACK HEADER":
                placed = reply[1]
                sent_at = time.monotonic()
                write_all(self.console, kernel + bootargs)
                reply = self._reader.reply(time.monotonic() + data_wait, skip_ready=True)
                if reply is None:
                    raise SdclError(f"no ACK DATA within {data_wait:.0f} s")
                if reply[0] == "ACK DATA":
                    if reply[1]["crc"] != crc:
                        raise SdclError(f"the loader acknowledged CRC {reply[1]['crc']:#010x}, "
                                        f"we sent {crc:#010x}")
                    self.pushed = {"attempts": attempt, "seconds": time.monotonic() - sent_at,
                                   **placed}
                    return
            if reply[0] != "NAK":
                raise SdclError(f"unexpected loader reply {reply}")
            code, message = reply[1]["code"], reply[1]["message"]
            if code not in TRANSIENT_NAKS or attempt > self.retries:
                raise SdclError(f"the loader refused the kernel (NAK {code}: {message}) "
                                f"after {attempt} attempt(s)")
            room = self._wait_ready(10)
        raise SdclError("retries exhausted")

    def _kernel_bytes(self) -> bytes:
        with open(self.target.env.config.get_image_path(self.image), "rb") as f:
            return f.read()

    def _read_to_exit(self):
        deadline = self._started + self.timeout
        quiet = self.quiet_timeout or self.timeout
        last = time.monotonic()
        while True:
            match = EXIT_LINE.search(self.log)
            if match:
                self.exit_code = int(match.group(1))
                return
            now = time.monotonic()
            if now >= deadline:
                raise StrategyError(f"no `# shootdown: exit N` within {self.timeout:.0f} s")
            if now - last >= quiet:
                raise StrategyError(f"console silent for {quiet:.0f} s before the exit line")
            if self._reader.feed(min(1.0, deadline - now)):
                last = time.monotonic()
            else:
                time.sleep(0.05)
