"""kapi-selftests: a kselftest-style harness and syscall fuzzer for KAPI.

Data flow (guest): issue syscall (syscalls, memory) -> capture (tracefs)
-> decode (events) -> pair (pairing) -> oracle -> report.
Host side (kapi_selftests.host) boots guests and never imports the
guest-only modules.
"""

__version__ = "0.1.0"
