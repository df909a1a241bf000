"""kapi-selftests: a kselftest-style harness and syscall fuzzer for KAPI.

The packages are the stages of the data flow (docs/design.md): ``fuzz`` plans
calls, ``guest`` issues them inside a capture window, ``trace`` decodes and
pairs what the kernel traced, ``oracle`` predicts and judges, ``report`` says
it in KTAP; ``host`` boots the guests and never imports ``guest``; ``link`` is
what the host and a guest's agent exchange. What crosses the stages lives in
``plan`` (calls to make) and ``records`` (calls made, batches, predictions).
"""

__version__ = "0.1.0"
