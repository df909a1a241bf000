"""Which spec'd syscalls the harness may issue generated calls of. Pure.

Any syscall a kernel specs gets generated calls from its spec alone
(:func:`kapi_selftests.fuzz.strategies.call_plans`), but some cannot be issued with
arbitrary arguments by a process that must survive them and leave the machine
as it was: they end or replace the process, signal other processes, change the
mappings the interpreter runs from, change system-wide state, or block without
bound. Those are denied by name, with the reason. A parameter whose kind the
generator cannot lay out safely (a function pointer, a struct passed by layout)
denies the spec too. :func:`missing_safe_calls` is the probe: a skip reason, or None.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from kapi_selftests.oracle.spec import ParamType, Spec

__all__ = ["DENIED", "UNSAFE_PARAM_TYPES", "missing_safe_calls", "safe_specs"]


def _deny(reason: str, *names: str) -> dict[str, str]:
    return {n: reason for n in names}


#: Syscalls never issued with generated arguments (SYSCALL_DEFINE names), and why.
DENIED: Mapping[str, str] = {
    **_deny("ends the calling process", "exit", "exit_group"),
    **_deny("replaces or duplicates the process (the harness would run twice or not at all)",
            "execve", "execveat", "fork", "vfork", "clone", "clone3"),
    **_deny("sends signals to processes its arguments name (any process, init included)",
            "kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo",
            "pidfd_send_signal", "process_mrelease"),
    **_deny("restores registers from the stack: the process crashes", "rt_sigreturn"),
    **_deny("reboots, halts or replaces the running kernel",
            "reboot", "kexec_load", "kexec_file_load"),
    **_deny("loads or unloads kernel modules", "init_module", "finit_module",
            "delete_module"),
    **_deny("changes the mappings the harness and its interpreter run from",
            "mmap", "munmap", "mremap", "mprotect", "pkey_mprotect", "brk", "shmat", "shmdt",
            "remap_file_pages", "mseal", "mlockall", "munlockall", "map_shadow_stack",
            "process_madvise", "userfaultfd"),
    **_deny("changes process state the interpreter depends on",
            "arch_prctl", "prctl", "set_tid_address", "set_robust_list", "rseq",
            "modify_ldt", "set_thread_area", "seccomp", "personality", "rt_sigaction",
            "rt_sigprocmask", "sigaltstack", "chdir", "fchdir", "chroot", "umask",
            "setrlimit", "prlimit64", "sched_setaffinity", "sched_setscheduler",
            "sched_setattr", "sched_setparam", "setpriority", "ioprio_set",
            "set_mempolicy", "mbind", "migrate_pages", "move_pages", "unshare", "setns",
            "close_range"),
    **_deny("changes credentials", "setuid", "setgid", "setreuid", "setregid",
            "setresuid", "setresgid", "setfsuid", "setfsgid", "setgroups", "capset",
            "setsid", "setpgid"),
    **_deny("writes another process's memory or controls it", "ptrace",
            "process_vm_writev", "pidfd_getfd"),
    **_deny("changes system-wide state", "mount", "umount", "pivot_root", "move_mount",
            "fsmount", "fsconfig", "mount_setattr", "open_tree_attr", "swapon", "swapoff",
            "settimeofday", "clock_settime", "adjtimex", "clock_adjtime", "sethostname",
            "setdomainname", "acct", "quotactl", "quotactl_fd", "iopl", "ioperm", "syslog",
            "vhangup", "bpf", "perf_event_open", "sync", "syncfs", "landlock_restrict_self",
            "lsm_set_self_attr", "keyctl", "add_key", "request_key", "fanotify_init",
            "io_uring_setup", "io_uring_enter", "io_uring_register"),
    **_deny("may block without bound", "pause", "rt_sigsuspend", "rt_sigtimedwait",
            "nanosleep", "clock_nanosleep", "futex", "futex_wait", "futex_waitv",
            "futex_requeue", "select", "pselect6", "poll", "ppoll", "epoll_wait",
            "epoll_pwait", "epoll_pwait2", "wait4", "waitid", "msgrcv", "msgsnd", "semop",
            "semtimedop", "mq_timedreceive", "mq_timedsend", "accept", "accept4", "recvfrom",
            "recvmsg", "recvmmsg", "io_getevents", "io_pgetevents", "flock", "splice", "tee",
            "vmsplice"),
}

#: Parameter types the generator cannot make a safe value of.
UNSAFE_PARAM_TYPES: Mapping[ParamType, str] = {
    ParamType.FUNC_PTR: "a function pointer (the kernel would jump to whatever is drawn)",
    ParamType.STRUCT: "a struct whose layout the spec does not give",
    ParamType.UNION: "a union whose layout the spec does not give",
    ParamType.ARRAY: "an array whose element layout the spec does not give",
    ParamType.CUSTOM: "a custom type the spec does not describe",
    ParamType.VOID: "a void parameter",
}


def missing_safe_calls(spec: Spec) -> str | None:
    """Why the harness must not issue generated calls of ``spec``, or None when it may.

    :param spec: a spec of the running kernel (``sys_<name>``)
    """
    name = spec.name.removeprefix("sys_")
    if name in DENIED:
        return f"{spec.name} not issued with generated arguments: it {DENIED[name]}"
    for p in spec.params:
        why = UNSAFE_PARAM_TYPES.get(p.type)
        if why is not None:
            return (f"{spec.name}: parameter {p.name} is {p.type.text_name}: {why}; "
                    "no generated calls")
    return None


_S = TypeVar("_S", bound=Spec)


def safe_specs(specs: Mapping[str, _S]) -> dict[str, _S]:
    """The specs the harness may issue generated calls of (what a fuzzing campaign
    generates, and counts in its coverage)."""
    return {n: s for n, s in specs.items() if missing_safe_calls(s) is None}
