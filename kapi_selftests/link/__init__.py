"""The link between the host and a guest's agent: the call table and the channel.

The call table the host packs and the guest's C executor runs, with the executor's
C source and its build on the host (``calltable``), and the shared-memory channel
both ends map (``shm``). The host side of a campaign (:mod:`kapi_selftests.fuzz.remote`)
and the guest side (:mod:`kapi_selftests.guest.agent`) both speak it; it issues no
syscall under test and reads no trace (the guest maps the channel's PCI BAR through
sysfs).
"""
