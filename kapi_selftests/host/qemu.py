"""Guest configuration and the QEMU (or virtme-ng) command line built from it.

Owns :class:`GuestConfig` (the frozen record of one guest), the per-arch QEMU
facts (:data:`ARCHES`, data, not branches), the accelerator probe and the argv
builders. Building argv is pure; only the KVM probe (:func:`watch_console`) runs a process.
Running the guest and reading its results is :mod:`kapi_selftests.host.runner`.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import logging
import os
import re
import select
import shlex
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kapi_selftests.cache import CACHE_DIR, atomic_write
from kapi_selftests.errors import MissingFeature, UsageError

__all__ = ["Accel", "ArchQemu", "ARCHES", "GuestConfig", "DEFAULT_CMDLINE", "probe_kvm",
           "kvm_verdict", "watch_console", "probe_argv", "choose_accel", "find_qemu",
           "qemu_argv", "vng_argv", "config_from_env"]

log = logging.getLogger(__name__)

# panic=-1 + -no-reboot: a panic ends QEMU instead of hanging it; oops=panic makes
# every oops end the run at once (the console keeps the splat). loglevel=5 keeps
# WARNINGs (KERN_WARNING) and worse on the console but drops the KERN_INFO boot
# chatter that costs time on an emulated UART.
DEFAULT_CMDLINE: tuple[str, ...] = ("console=ttyS0", "panic=-1", "oops=panic", "loglevel=5")


class Accel(enum.Enum):
    AUTO = "auto"
    KVM = "kvm"
    TCG = "tcg"


@dataclass(frozen=True, slots=True)
class ArchQemu:
    """How QEMU runs one guest architecture (one row of :data:`ARCHES`)."""

    arch: str
    qemu: str  # binary name
    machine: str
    console: str  # kernel console= device
    kvm_cpu: str
    tcg_cpu: str
    # under TCG: single-threaded (multi-threaded TCG hit "Oops: int3" at static-key
    # sites while tracepoints were being enabled, see tests/data/kapi-reference/README.md)
    tcg_accel: str = "tcg,thread=single"
    extra: tuple[str, ...] = ()


ARCHES: dict[str, ArchQemu] = {
    "x86_64": ArchQemu(arch="x86_64", qemu="qemu-system-x86_64", machine="pc",
                       console="ttyS0", kvm_cpu="host", tcg_cpu="max"),
}


@dataclass(frozen=True, slots=True)
class GuestConfig:
    """One guest: kernel, resources, command line and limits.

    :param kernel: image passed to ``-kernel`` (bzImage or PVH vmlinux)
    :param initrd: initramfs built for this guest (None for vng)
    :param out_dir: host directory shared writable as the guest's output area
    :param memory_mb: guest RAM
    :param cpus: vCPUs
    :param timeout_s: whole-run limit (boot included)
    :param progress_timeout_s: kill the guest after this long with no console output
    :param cmdline: kernel command line
    :param append: extra kernel command line words (``--append``)
    :param accel: kvm, tcg or auto (probe kvm, fall back to tcg)
    :param arch: key of :data:`ARCHES`
    :param root: host directory shared read-only as the guest's root
    :param extra_qemu: more QEMU arguments, appended as given
    :param pvh: boot the ELF inside a bzImage directly (PVH): saves its decompression
    :param pyzip: put the pure-Python packages the guest imports in the initramfs as a
        zip (see :mod:`kapi_selftests.host.pyzip`): imports without 9p round trips
    :param project: the project directory, shared read-only at its own path (the root
        share alone does not show it when it lives under a guest tmpfs such as /tmp)
    """

    kernel: Path
    initrd: Path | None = None
    out_dir: Path = Path("/tmp")
    memory_mb: int = 2048
    cpus: int = 1
    timeout_s: int = 900
    progress_timeout_s: int = 300
    cmdline: tuple[str, ...] = DEFAULT_CMDLINE
    append: tuple[str, ...] = ()
    accel: Accel = Accel.AUTO
    arch: str = "x86_64"
    root: Path = Path("/")
    extra_qemu: tuple[str, ...] = field(default=())
    pvh: bool = True  # boot a bzImage's inner vmlinux via PVH when it has the note
    project: Path | None = None  # shared read-only at the same path (tag kapiproj)
    pyzip: bool = True  # ship the guest's Python library as a zip in the initramfs

    def __post_init__(self) -> None:
        if self.memory_mb < 128:
            raise UsageError(f"memory_mb={self.memory_mb}: a guest needs at least 128 MB")
        if not 1 <= self.cpus <= 64:
            raise UsageError(f"cpus={self.cpus}: must be 1..64")
        if self.timeout_s <= 0 or self.progress_timeout_s <= 0:
            raise UsageError("timeouts must be positive")
        if self.arch not in ARCHES:
            raise UsageError(f"arch {self.arch!r} not supported (have: {', '.join(ARCHES)})")


def config_from_env(cfg: GuestConfig, env: Mapping[str, str] | None = None) -> GuestConfig:
    """``cfg`` with ``KAPI_MEMORY_MB``, ``KAPI_CPUS``, ``KAPI_TIMEOUT_S`` applied.

    Precedence: built-in defaults < these variables < CLI flags (applied after).
    """
    e = os.environ if env is None else env
    out: dict[str, Any] = {}
    for var, key in (("KAPI_MEMORY_MB", "memory_mb"), ("KAPI_CPUS", "cpus"),
                     ("KAPI_TIMEOUT_S", "timeout_s")):
        if e.get(var):
            try:
                out[key] = int(e[var])
            except ValueError as exc:
                raise UsageError(f"{var}={e[var]!r}: not an integer") from exc
    return replace(cfg, **out)


def find_qemu(arch: str = "x86_64") -> str:
    """Path of the QEMU binary for ``arch``.

    :raises MissingFeature: QEMU is not installed
    """
    name = ARCHES[arch].qemu
    path = shutil.which(name)
    if path is None:
        raise MissingFeature(f"{name} not found: QEMU is not installed",
                             hint="apt-get install qemu-system-x86")
    return path


#: how long KVM gets to show the kernel's first console line before it is given up
KVM_PROBE_DEADLINE_S = 15.0
#: the kernel's first console line (its banner, printed at once with earlyprintk)
KERNEL_FIRST_LINE = re.compile(rb"Linux version \d")
#: the probe's command line: the banner on the serial port as early as possible; no root
#: (the kernel panics after the probe has seen what it needs, and -no-reboot ends QEMU)
PROBE_CMDLINE = "console=ttyS0 earlyprintk=serial,ttyS0,115200 loglevel=8 panic=-1"
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@dataclass(frozen=True, slots=True)
class ConsoleWatch:
    """What :func:`watch_console` saw.

    :param seen: the marker showed up in time
    :param elapsed_s: seconds from start to the marker, QEMU's exit or the deadline
    :param returncode: QEMU's own exit status when it ended by itself, else None (killed)
    :param tail: the last output (console and stderr), for the reason
    """

    seen: bool
    elapsed_s: float
    returncode: int | None
    tail: str


def watch_console(argv: list[str], marker: re.Pattern[bytes], deadline_s: float
                  ) -> ConsoleWatch:
    """Start ``argv`` (a QEMU writing its console and errors to stdout) and wait for
    ``marker``: return at once when it shows, when QEMU exits, or at the deadline. QEMU
    never outlives the call.
    """
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    buf = b""
    seen = eof = False
    try:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        while not seen:
            left = t0 + deadline_s - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                eof = True  # QEMU is exiting: its status follows
                break
            buf = (buf + chunk)[-8192:]
            seen = marker.search(buf) is not None
    finally:
        if eof:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        ended = proc.poll() is not None
        if not ended:
            proc.kill()
        proc.wait()
    tail = buf.decode("utf-8", "replace").strip().splitlines()[-3:]
    return ConsoleWatch(seen=seen, elapsed_s=round(time.monotonic() - t0, 3),
                        returncode=proc.returncode if ended else None, tail=" | ".join(tail))


def probe_argv(qemu: str, kernel: Path, accel: Accel, arch: str = "x86_64") -> list[str]:
    """The QEMU that boots ``kernel`` with no root, its console on stdout (pure)."""
    a = ARCHES[arch]
    accel_args = (["-accel", "kvm", "-cpu", a.kvm_cpu] if accel is Accel.KVM
                  else ["-accel", a.tcg_accel, "-cpu", a.tcg_cpu])
    return [qemu, "-M", a.machine, *accel_args, "-m", "256", "-nodefaults", "-no-user-config",
            "-no-reboot", "-display", "none", "-chardev", "stdio,id=con,signal=off",
            "-serial", "chardev:con", "-kernel", str(kernel), "-append", PROBE_CMDLINE]


def probe_kvm(qemu: str, kernel: Path, arch: str = "x86_64",
              deadline_s: float = KVM_PROBE_DEADLINE_S) -> str | None:
    """Why KVM cannot be used here, or None when it was seen to make progress.

    Opening ``/dev/kvm`` is not enough, nor is a QEMU that starts: on some hosts
    ``-cpu host`` aborts at the first vCPU reset (``failed to set MSR 0x10a``), on
    others the guest runs the firmware and then hangs for good. So boot ``kernel``
    with KVM and require its first console line within ``deadline_s``.
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is missing or not accessible"
    argv = probe_argv(qemu, kernel, Accel.KVM, arch)
    log.info("probing KVM: %s", shlex.join(argv))
    w = watch_console(argv, KERNEL_FIRST_LINE, deadline_s)
    if w.seen:
        log.info("KVM works: the kernel's first line after %.1f s", w.elapsed_s)
        return None
    if w.returncode is not None:
        return f"QEMU with KVM exited {w.returncode} before the kernel printed anything" + (
            f" ({w.tail})" if w.tail else "")
    return (f"no kernel output with KVM within {deadline_s:g} s (the guest hangs)"
            + (f"; last output: {w.tail}" if w.tail else ""))


@dataclass(frozen=True, slots=True)
class KvmVerdict:
    """Whether KVM works on this host boot (``reason`` None: it does)."""

    reason: str | None
    probed_s: float = 0.0
    cached: bool = False


def kvm_verdict(qemu: str, kernel: Path, arch: str = "x86_64", *,
                cache_dir: Path = CACHE_DIR, boot_id: Path = _BOOT_ID) -> KvmVerdict:
    """:func:`probe_kvm`, decided once per host boot and QEMU binary: the verdict is
    kept under ``cache_dir`` keyed by the kernel's ``boot_id``, so only the first run
    after a reboot (or a QEMU upgrade) pays for the probe.
    """
    try:
        bid = boot_id.read_text().strip()
    except OSError:
        bid = ""
    key = hashlib.sha256(f"{bid}\0{qemu}\0{_mtime(qemu)}\0{arch}".encode()).hexdigest()[:16]
    path = cache_dir / f"kvm-verdict-{key}.json"
    if bid:
        try:
            saved = json.loads(path.read_text())
            return KvmVerdict(reason=saved["reason"], probed_s=float(saved["probed_s"]),
                              cached=True)
        except (OSError, ValueError, KeyError, TypeError):
            pass
    t0 = time.monotonic()
    reason = probe_kvm(qemu, kernel, arch)
    verdict = KvmVerdict(reason=reason, probed_s=round(time.monotonic() - t0, 3))
    if bid:
        with contextlib.suppress(OSError):
            atomic_write(path, json.dumps({"reason": reason, "probed_s": verdict.probed_s,
                                           "boot_id": bid, "qemu": qemu}))
    return verdict


def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


_CHOSEN: dict[tuple[str, str], Accel] = {}


def choose_accel(cfg: GuestConfig, qemu: str) -> Accel:
    """Resolve ``auto``: KVM when it was seen to boot a kernel on this host boot, else
    TCG with a one-line warning (once per process). Every command that boots asks here.
    """
    if cfg.accel is not Accel.AUTO:
        return cfg.accel
    key = (qemu, cfg.arch)
    if key not in _CHOSEN:
        v = kvm_verdict(qemu, cfg.kernel, cfg.arch)
        if v.reason is None:
            _CHOSEN[key] = Accel.KVM
        else:
            how = ("decided earlier on this host boot" if v.cached
                   else f"probed in {v.probed_s:.1f} s")
            log.warning("KVM unusable (%s; %s); using TCG", v.reason, how)
            _CHOSEN[key] = Accel.TCG
    return _CHOSEN[key]


def kernel_cmdline(cfg: GuestConfig) -> str:
    """The kernel command line: defaults, then the user's ``--append`` words."""
    return " ".join((*cfg.cmdline, *cfg.append))


def qemu_argv(cfg: GuestConfig, qemu: str, accel: Accel) -> list[str]:
    """The full QEMU argv for ``cfg`` (pure).

    The console goes to stdout (the runner copies it to a file as it arrives);
    the host root is shared read-only and the output directory writable, both
    over 9p with ``multidevs=remap`` (the host ``/`` spans several devices).
    """
    if accel is Accel.AUTO:
        raise ValueError("resolve Accel.AUTO with choose_accel() first")
    a = ARCHES[cfg.arch]
    accel_args = (["-accel", "kvm", "-cpu", a.kvm_cpu] if accel is Accel.KVM
                  else ["-accel", a.tcg_accel, "-cpu", a.tcg_cpu])
    argv = [qemu, "-M", a.machine, *accel_args,
            "-m", str(cfg.memory_mb), "-smp", str(cfg.cpus),
            "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
            "-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con",
            "-kernel", str(cfg.kernel)]
    if cfg.initrd is not None:
        argv += ["-initrd", str(cfg.initrd)]
    argv += ["-append", kernel_cmdline(cfg),
             "-virtfs", f"local,path={cfg.root},mount_tag=hostroot,security_model=none,"
                        "readonly=on,multidevs=remap",
             "-virtfs", f"local,path={cfg.out_dir},mount_tag=kapiout,security_model=none,"
                        "multidevs=remap",
             ]
    if cfg.project is not None:
        argv += ["-virtfs", f"local,path={cfg.project},mount_tag=kapiproj,security_model=none,"
                            "readonly=on,multidevs=remap"]
    argv += [*a.extra, *cfg.extra_qemu]
    return argv


def vng_argv(cfg: GuestConfig, command: str, *, vng: str = "vng", accel: Accel = Accel.TCG,
             project: Path | None = None) -> list[str]:
    """The virtme-ng command line that runs ``command`` in a guest booted from ``cfg``.

    vng shares the host root itself, so ``cfg.initrd`` is ignored. It needs udev
    on the host (its console ports appear under ``/dev/virtio-ports``); see README.
    """
    argv = [vng, "--run", str(cfg.kernel), "--memory", f"{cfg.memory_mb}M",
            "--cpus", str(cfg.cpus), "--force-9p", "--rwdir", str(cfg.out_dir), "--verbose"]
    if project is not None:
        argv += ["--rwdir", str(project)]
    if accel is not Accel.KVM:
        argv.append("--disable-kvm")
    extra = [w for w in (*cfg.cmdline, *cfg.append) if not w.startswith("console=")]
    for word in extra:
        argv += ["--append", word]
    argv += [f"--qemu-opts={a}" for a in cfg.extra_qemu]  # one word each, as given
    argv += ["--exec", command]
    return argv
