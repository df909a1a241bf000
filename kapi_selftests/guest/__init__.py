"""Guest side: what runs inside the kernel under test and touches it.

Raw syscalls by number (``syscalls``), memory and fds the harness owns
(``memory``, ``fds``), a private tracefs instance (``tracefs``), the executors
that issue batches inside one capture window (``executor`` in Python, ``cexec``
in C, ``agent`` for the host-driven campaign), plans made concrete
(``materialize``), the ptrace witness (``witness``) and the pipeline in one
object (``harness``). Nothing here is imported by :mod:`kapi_selftests.host`.
"""
