"""Host side: find and build kernels, boot them in QEMU or virtme-ng, collect results.

Kernels and their checks (``kernel``, ``stock``, ``build``), the guest's
initramfs and library (``initramfs``, ``pyzip``, ``warm``), the QEMU command
line and the KVM decision (``qemu``), the console and its splats (``console``),
guests booted, watched and turned into results (``runner``), the gate's two
kernels (``gate_run``) and ``pytest --kernel`` (``pytest_plugin``). Never
imports :mod:`kapi_selftests.guest`.
"""
