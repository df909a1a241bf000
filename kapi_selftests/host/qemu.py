"""Guest configuration and the QEMU (or virtme-ng) command line built from it.

Owns :class:`GuestConfig` (the frozen record of one guest), the per-arch QEMU
facts (:data:`ARCHES`, data, not branches), the accelerator probe and the argv
builders. Building argv is pure; only :func:`probe_accel` runs a process.
Running the guest and reading its results is :mod:`kapi_selftests.host.runner`.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import logging
import os
import select
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from kapi_selftests.errors import MissingFeature, UsageError

__all__ = ["Accel", "ArchQemu", "ARCHES", "GuestConfig", "DEFAULT_CMDLINE", "probe_accel",
           "choose_accel", "find_qemu", "qemu_argv", "vng_argv", "config_from_env"]

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
    # sites while tracepoints were being enabled, see shared/kapi-reference/README.md)
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


@functools.cache
def probe_accel(qemu: str, arch: str = "x86_64", timeout_s: float = 30.0) -> str | None:
    """Why KVM cannot be used here, or None when it works.

    Opening ``/dev/kvm`` is not enough: on some hosts ``-cpu host`` aborts at
    the first vCPU reset (``failed to set MSR``), right after QEMU comes up. So
    start a paused QEMU with KVM and QMP on stdio and ask for the registers
    (``info registers``): that waits for the vCPU thread, which first runs the
    queued reset, so a register dump means KVM really works. (Neither a fixed wait
    nor the QMP greeting alone is enough: the reset fails after the greeting, and
    on a loaded host QEMU can take seconds to get anywhere.)
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is missing or not accessible"
    a = ARCHES[arch]
    argv = [qemu, "-accel", "kvm", "-cpu", a.kvm_cpu, "-M", a.machine, "-display", "none",
            "-nodefaults", "-no-user-config", "-S", "-qmp", "stdio", "-serial", "none",
            "-monitor", "none"]
    log.info("probing KVM: %s", shlex.join(argv))
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout_s
    works = False
    try:
        if proc.stdout is not None and proc.stdin is not None:
            out = _read_until(proc.stdout, b'{"QMP"', deadline)
            if b'{"QMP"' in out:
                with contextlib.suppress(OSError):
                    proc.stdin.write(b'{"execute": "qmp_capabilities"}\n'
                                     b'{"execute": "human-monitor-command", '
                                     b'"arguments": {"command-line": "info registers"}}\n')
                    proc.stdin.flush()
                out = _read_until(proc.stdout, b"IP=", deadline, out)
                works = b"RIP=" in out or b"EIP=" in out
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    if works:
        return None
    err = (proc.stderr.read().decode("utf-8", "replace") if proc.stderr else "").strip()
    first = err.splitlines()[0] if err else ""
    if proc.returncode is not None and proc.returncode != -signal.SIGKILL:
        return f"QEMU with KVM exited at once ({first or f'status {proc.returncode}'})"
    return f"QEMU with KVM did not come up within {timeout_s:g} s" + (f" ({first})"
                                                                       if first else "")


def _read_until(stream: IO[bytes], marker: bytes, deadline: float, buf: bytes = b"") -> bytes:
    # read a pipe until marker shows up, EOF, or the deadline; return all read so far
    fd = stream.fileno()
    while marker not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    return buf


def choose_accel(cfg: GuestConfig, qemu: str) -> Accel:
    """Resolve ``auto``: KVM when the probe passes, else TCG with a one-line warning."""
    if cfg.accel is not Accel.AUTO:
        return cfg.accel
    reason = probe_accel(qemu, cfg.arch)
    if reason is None:
        return Accel.KVM
    log.warning("KVM unusable (%s); using TCG", reason)
    return Accel.TCG


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
    argv += ["--exec", command]
    return argv
